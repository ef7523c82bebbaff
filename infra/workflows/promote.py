"""``ragops promote --from dev --to staging``: ship exactly the build the source stack runs, nothing else.

A promotion reads the source stack's ``imageDigest`` output (the image it actually deployed), refuses unless it is
an immutable ``...@sha256:<64 hex>`` ref this machine can read (the target's ``up`` copies it into the target's own
registry with skopeo, digest preserved: ``check_copy_prerequisites``) and the source has no pending changes (its
preview is empty, so what is deployed is what the code says), then on the target: sets ``rag:image`` to that digest, copies the
``PROMOTABLE_KEYS`` (service settings that describe the build's behaviour, not the environment) and
``rag:embedding`` as the source runs it (the image holds exactly those models), records ``rag:promotion`` =
{from, digest, at, by, models}, all in one ``config set-all`` write, and runs ``pulumi up``.

A promotion is refused before anything is written when the image cannot start on the target's registry schema
(``check_schema``, as for a rollback), and one that changes the target's embedding model when the image
cannot serve the target's current index meanwhile (it lacks the model that index was built with); the CLI
follows the re-index such a promotion starts (``infra.workflows.reindex.converge``).

Promotions follow the stacks' `rag:environment` (their stack files in the checkout): a staging-environment stack
receives only from a dev-environment one, a prod one only from a staging one, so prod never receives a build a
staging stack has not run (with the shipped stacks: dev -> staging -> prod; ``check_order``).

The source's half can run elsewhere (``check_source``, ``ragops promote --check-source-only``): promote.yml checks
the source in a job of the source's own environment and hands the target's jobs its ``SourceCheck`` record, so a
job never holds another environment's credentials (REVIEW10 F2).

Every fact about the source comes from the backend, never from the runner's checkout: its outputs (digest,
embedding, the models its image holds) and the config its latest update ran with (``stacks.deployed_config``:
what the pending-changes preview runs with, and where the promotable settings are read). A promotion's own writes
land in the target's stack file in this checkout only, which a CI runner throws away; the target's ``up`` records
them in the backend with the update, which is where the next promotion (another job, another checkout) reads them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import re
import stat
import subprocess
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pulumi.automation import ConfigMap, UpdateSummary, Workspace

from infra import schema as schema_mod
from infra.workflows import reindex as reindex_mod
from infra.workflows.alerting import check_alerting, rollback_warning
from infra.workflows.preview import NO_CHANGE_OPS, PreviewReport, run_preview
from infra.workflows.registry_upgrade import check_major_upgrade, check_registry_recoverable
from infra.workflows.scaling import check_scale_down
from infra.workflows.secrets import check_secrets_kept
from infra.workflows.stacks import (
    PERMANENT_STACKS,
    POLICY_PACK,
    PROJECT,
    PROMOTION_CHAIN,
    REPO_ROOT,
    Context,
    OnEvent,
    OnOutput,
    UsageError,
    WorkflowError,
    _as_object,
    allowed_promotions,
    deployed_config,
    describe_counts,
    is_permanent,
    promotion_environment,
    rfc3339,
    select,
    set_config_values,
    stack_file_restorer,
)

IMAGE_KEY = f"{PROJECT}:image"
PROMOTION_KEY = f"{PROJECT}:promotion"
SERVICE_KEY = f"{PROJECT}:service"

# Paths inside `rag:service` copied source -> target. They change what the build *does* with documents (how text
# is chunked and embedded, which collections it reads and writes, what it accepts), so staging must test exactly
# what prod will run. Everything else under `rag:service` -- replicas, autoscaling, resources, PDBs, log level,
# cache/rate-limit/concurrency knobs, CORS origins, API docs -- is sized or exposed per environment and stays put.
PROMOTABLE_KEYS: tuple[str, ...] = (
    "service.settings.chunkSize",
    "service.settings.chunkOverlap",
    "service.settings.embeddingBatchSize",
    "service.settings.maxDocumentBytes",
    "service.settings.qdrantCollectionPrefix",
)

DIGEST_REF = re.compile(r"^[^\s@]+@sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Promotion:
    """What a promotion did (the recorded ``rag:promotion`` value plus the copied settings)."""

    source: str
    target: str
    digest: str
    at: str
    by: str
    copied: dict[str, Any]
    models: list[str] | None = None
    """The embedding models the promoted image holds (the source's ``embedding.imageModels`` output)."""
    index_before: dict[str, Any] | None = None
    """The target's ``embedding`` output before the promotion (what its index was built with)."""

    def record(self) -> dict[str, Any]:
        """The ``rag:promotion`` config value."""
        record: dict[str, Any] = {"from": self.source, "digest": self.digest, "at": self.at, "by": self.by}
        if self.models is not None:
            record["models"] = list(self.models)
        return record


def promotion_targets(source: str, work_dir: Path = REPO_ROOT) -> list[str]:
    """The stacks `source` may promote to in this checkout (`allowed_promotions`), in promotion order: what
    promote.yml fans out to. From `dev`: every committed permanent stack of environment staging (a fourth stack
    such as `qa` included once its file is committed); from `staging`: every one of environment prod."""
    return [target for src, target in allowed_promotions(work_dir) if src == source]


def check_order(source: str, target: str, work_dir: Path = REPO_ROOT) -> None:
    """Refuse any promotion but one along the environments: from a permanent stack whose `rag:environment` is dev
    to a staging one, or staging to prod (read from the stack files in `work_dir`, so a fourth permanent stack
    such as ``Pulumi.qa.yaml`` with environment staging receives from dev, docs/delivery.md#adding-a-permanent-stack).
    """
    allowed = allowed_promotions(work_dir)
    if (source, target) in allowed:
        return
    listed = ", ".join(f"{a} -> {b}" for a, b in allowed)
    why = ""
    if source == target:
        why = " (a stack cannot promote to itself)"
    else:
        for name in (source, target):
            if not is_permanent(work_dir, name):
                why = (
                    f" ({name} is not a permanent stack: no Pulumi.{name}.yaml in this checkout, or one with a "
                    f"{PROJECT}:ephemeral record)"
                )
                break
            if promotion_environment(work_dir, name) is None:
                why = (
                    f" (Pulumi.{name}.yaml is not committed: a stack other than {', '.join(PERMANENT_STACKS)} takes "
                    "part in promotions by its committed stack file only, what the team reviewed, "
                    "docs/delivery.md#adding-a-permanent-stack)"
                )
                break
        else:
            src_env = promotion_environment(work_dir, source)
            tgt_env = promotion_environment(work_dir, target)
            why = (
                f" ({source} is environment {src_env} and {target} is environment {tgt_env}, by {PROJECT}:environment "
                f"in their stack files: a stack receives only from the environment before its own, "
                + ", ".join(f"{a} -> {b}" for a, b in PROMOTION_CHAIN.items())
                + ")"
            )
    raise UsageError(f"Cannot promote {source} -> {target}: the only allowed promotions are {listed}{why}.")


def check_digest(ref: Any, source: str) -> str:
    """Return the ref when it is an immutable digest ref, else refuse with the reason."""
    if not isinstance(ref, str) or not ref:
        raise WorkflowError(
            f"Stack {source!r} has no `imageDigest` output: deploy it first (`pulumi up -s {source}`), then promote."
        )
    if not DIGEST_REF.match(ref):
        raise WorkflowError(
            f"Stack {source!r} exports imageDigest {ref!r}, which is not an immutable digest ref "
            "(REGISTRY/REPO@sha256:<64 lowercase hex>); refusing to promote a mutable tag."
        )
    return ref


def check_copy_prerequisites(ctx: Context, source: str, target: str, digest: str) -> None:
    """Refuse before anything is written when this machine cannot copy the digest into the target's registry.

    The target's ``up`` copies the image with skopeo on this machine (``ServiceImage``'s copy): a missing skopeo,
    a source registry this machine cannot read, or a digest no longer in it would otherwise fail that ``up``
    after it started changing the target.
    """
    # Imported here: the component module loads the Pulumi provider SDKs, which only a promotion needs.
    from infra.components.image import CopyPrerequisiteError, check_copy_source

    check = check_copy_source if ctx.check_image_source is None else ctx.check_image_source
    try:
        check(digest)
    except CopyPrerequisiteError as exc:
        raise WorkflowError(f"Cannot promote {source} -> {target}: {exc}") from exc


def check_target_registry_tools(ctx: Context, ws: Workspace, source: str, target: str) -> None:
    """Refuse before anything is written when the target is on gke/eks and this machine lacks its registry's CLI:
    the copy also logs in to the target's own registry (gcloud for Artifact Registry, aws for ECR) and tags the
    image there with skopeo, so the source's tool alone is not enough (`deploy.check_registry_tools_here` is the
    same check for `ragops up`)."""
    from infra.components.image import CopyPrerequisiteError, check_registry_tools
    from infra.workflows.deploy import COPYING_PROVIDERS, cluster_provider

    provider = cluster_provider(ws.get_all_config(target))
    if provider not in COPYING_PROVIDERS:
        return
    tools = check_registry_tools if ctx.check_registry_tools is None else ctx.check_registry_tools
    try:
        tools(provider)
    except CopyPrerequisiteError as exc:
        raise WorkflowError(
            f"Cannot promote {source} -> {target}: the copy logs in to {target}'s own registry on this machine, "
            f"and {str(exc)[0].lower()}{str(exc)[1:]}"
        ) from exc


def _get_path(obj: dict[str, Any], path: list[str]) -> tuple[bool, Any]:
    node: Any = obj
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _set_path(obj: dict[str, Any], path: list[str], value: Any) -> None:
    node = obj
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


def _del_path(obj: dict[str, Any], path: list[str]) -> None:
    node: Any = obj
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(path[-1], None)


def _service_object(ws: Workspace, stack: str, config: ConfigMap | None = None) -> dict[str, Any]:
    value = (ws.get_all_config(stack) if config is None else config).get(SERVICE_KEY)
    if value is None or value.value in ("", None):
        return {}
    if value.secret:
        raise WorkflowError(
            f"Stack {stack!r} stores {SERVICE_KEY} as a secret; promotable settings must be plain."
        )
    try:
        parsed = json.loads(value.value) if isinstance(value.value, str) else value.value
    except json.JSONDecodeError as exc:
        raise WorkflowError(
            f"Stack {stack!r} has a {SERVICE_KEY} value that is not an object: {exc}."
        ) from exc
    if not isinstance(parsed, dict):
        raise WorkflowError(f"Stack {stack!r} has a {SERVICE_KEY} value that is not an object.")
    return parsed


def merge_promotable(source_service: dict[str, Any], target_service: dict[str, Any]) -> tuple[dict, dict]:
    """Target's ``rag:service`` with each promotable path made equal to the source's (unset stays unset).

    Returns (merged object, {path: value copied or None when removed}).
    """
    merged = copy.deepcopy(target_service)
    copied: dict[str, Any] = {}
    for key in PROMOTABLE_KEYS:
        path = key.split(".")[1:]  # drop the leading "service"
        present, value = _get_path(source_service, path)
        if present:
            _set_path(merged, path, copy.deepcopy(value))
            copied[key] = value
        else:
            # The source runs on the project default: so must the target.
            _del_path(merged, path)
            copied[key] = None
    return merged, copied


def promote(
    ctx: Context,
    source: str,
    target: str,
    *,
    on_output: OnOutput | None = None,
    on_event: OnEvent | None = None,
    drop_secrets: Collection[str] = (),
    policy_pack: str | None = POLICY_PACK,
    checked: SourceCheck | None = None,
    previewed_version: int | None = None,
) -> Promotion:
    """Promote the source stack's deployed image (and promotable settings) to the target, then ``up`` it with the
    policy pack (`ragops up` and `rollback` run it too: a promotion is how staging and prod are updated, so without
    it the pack never ran where `protect-stateful-in-prod` and the TLS rules apply; REVIEW10 F7).

    `previewed_version`: the target's last update version when the preview the approvers read was taken
    (`last_update_version`, recorded by the preview job); refused when the target was updated since."""
    ws, tgt, values, promotion = _prepare(ctx, source, target, on_output, on_event, drop_secrets, checked)
    if previewed_version is not None:
        check_unchanged_since_preview(ws, target, previewed_version)  # before anything is written
    check_registry_recoverable(ws, target)  # from the state alone: before anything is written
    write_checked(ws, target, values)
    tgt.up(
        policy_packs=[policy_pack] if policy_pack else None,
        on_output=on_output,
        on_event=on_event,
        message=f"promote {source} -> {target}: {digest_of(values)}",
    )
    return promotion


def write_checked(ws: Workspace, stack: str, values: Mapping[str, Any]) -> None:
    """Write `values` into the stack's file and run the guards that read the config to apply (the Qdrant
    scale-down and the registry's major-version guard); when a guard refuses, the stack file is put back byte for
    byte, so a promotion or rollback refused on a laptop leaves the checkout as it found it (it kept the promoted
    image and settings before)."""
    restore = stack_file_restorer(ws, stack)
    set_config_values(ws, stack, values)
    try:
        check_scale_down(ws, stack)
        check_major_upgrade(ws, stack)
    except BaseException:
        restore()
        raise


def last_update_version(ws: Workspace, stack: str) -> int:
    """The version of the stack's newest update in the backend's history (`pulumi stack history`; 0: none yet).
    Any update counts, whatever its kind or result: a failed `up` or a refresh changes the state too."""
    newest = select(ws, stack).history(page_size=1, show_secrets=False)
    return int(newest[0].version) if newest else 0


def check_unchanged_since_preview(ws: Workspace, target: str, previewed: int) -> None:
    """Refuse when the target was updated after the preview its approvers read (REVIEW_INFRA20 R2): between the
    preview job and the approval (up to 30 days) a `ragops rollback` or a hand-run `up` may change the target, and
    the approved `up` would then apply a diff nobody previewed."""
    now = last_update_version(ws, target)
    if now != previewed:
        raise WorkflowError(
            f"{target} changed since the preview the approvers read (update {previewed} -> {now}): run the "
            "workflow again"
        )


def preview_promotion(
    ctx: Context,
    source: str,
    target: str,
    *,
    on_output: OnOutput | None = None,
    on_event: OnEvent | None = None,
    drop_secrets: Collection[str] = (),
    policy_pack: str | None = POLICY_PACK,
    checked: SourceCheck | None = None,
) -> tuple[Promotion, PreviewReport]:
    """What ``promote`` would do to the target, without doing it (``ragops promote --preview-only``): the same
    refusals and the source's pending-changes check, then ``pulumi preview --diff`` of the target with the promoted
    config written to this checkout's stack file only for the preview (put back byte for byte afterwards, as
    ``deployed_config`` does): the backend and the target's resources are not touched. What the target's ``up``
    would change is everything the checkout's program changed since the target's last update, not only the image:
    the approver of a promotion reads this (REVIEW10 F4)."""
    ws, _, values, promotion = _prepare(ctx, source, target, on_output, on_event, drop_secrets, checked)
    check_registry_recoverable(ws, target)
    restore = stack_file_restorer(ws, target)
    try:
        write_checked(ws, target, values)
        report = run_preview(ws, target, policy_pack=policy_pack, on_output=on_output, on_event=on_event)
    finally:
        restore()
    return promotion, report


def digest_of(values: Mapping[str, Any]) -> str:
    """The promoted image of a promotion's config values."""
    return str(values[IMAGE_KEY])


def checkout_commit(work_dir: Path) -> str | None:
    """The commit `work_dir`'s git checkout is at (HEAD), or None outside a git checkout."""
    try:
        shown = subprocess.run(  # noqa: S603 - fixed argv, no shell
            ["git", "-C", str(work_dir), "rev-parse", "--verify", "HEAD"],  # noqa: S607 - git from PATH
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return shown.stdout.strip() or None if shown.returncode == 0 else None


#: The type token of the image build (infra/components/image.py `ServiceImage`).
IMAGE_BUILD_TYPE = "docker-build:index:Image"
#: The permission bits git gives a checked-out file of each recorded mode under umask 022 (CI's runners).
GIT_CHECKOUT_MODES = {"100644": 0o644, "100755": 0o755}


def modes_unlike_ci(work_dir: Path, limit: int = 3) -> tuple[int, list[str]]:
    """Tracked files of `work_dir`'s checkout whose permission bits differ from what git checks out under umask 022
    (0644, 0755 for executables): how many, and the first `limit` as `path (-rw-rw-r--)`. (0, []) outside git."""
    try:
        listed = subprocess.run(  # noqa: S603 - fixed argv, no shell
            ["git", "-C", str(work_dir), "ls-files", "-s", "-z"],  # noqa: S607 - git from PATH
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return 0, []
    if listed.returncode != 0:
        return 0, []
    count, examples = 0, []
    for entry in listed.stdout.decode(errors="replace").split("\0"):
        meta, _, name = entry.partition("\t")
        expected = GIT_CHECKOUT_MODES.get(meta.split(" ", 1)[0])
        if expected is None or not name:
            continue  # symlinks, submodules
        try:
            mode = (work_dir / name).lstat().st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode) and stat.S_IMODE(mode) != expected:
            count += 1
            if len(examples) < limit:
                examples.append(f"{name} ({stat.filemode(mode)})")
    return count, examples


def image_modes_note(work_dir: Path, report: PreviewReport) -> str:
    """Why a checkout made under another umask previews the image as rebuilt (REVIEW10 F6): pulumi-docker-build
    (0.0.22, provider/internal/context.go `hashFile`) writes each file's mode string into the build context's
    hash, so a clone under umask 002 (`-rw-rw-r--`) hashes unlike CI's (022, `-rw-r--r--`) with the same content.
    The provider has no option to leave modes out; the note names the files ("" when the image build is not among
    the report's changes, or every mode is CI's). Said by a refused promotion and by `ragops preview`."""
    if not any(s.type == IMAGE_BUILD_TYPE and s.op not in NO_CHANGE_OPS for s in report.steps):
        return ""
    count, examples = modes_unlike_ci(work_dir)
    if not count:
        return ""
    return (
        f"{count} file(s) of this checkout have other permissions than a CI checkout (umask 022) gives them, e.g. "
        f"{', '.join(examples)}: pulumi-docker-build hashes each file's mode into the build context, so this "
        "checkout (made under umask 002?) previews the image as rebuilt even with the same content."
    )


#: How to put a checkout's modes back to a CI checkout's (the fix every mode note names).
FIX_MODES = "`git ls-files -z | xargs -0 chmod g-w,o-w` in the checkout; or clone again after `umask 022`"


def _image_mode_hint(work_dir: Path, report: PreviewReport) -> str:
    """The promotion's refusal's part of `image_modes_note`."""
    note = image_modes_note(work_dir, report)
    if not note:
        return ""
    return f" The image build is among them, and {note} Promote from CI, or fix the modes ({FIX_MODES}) and check again."


SOURCE_RECORD_KIND = "ragops/promotion-source/v1"


@dataclass(frozen=True)
class SourceCheck:
    """A promotion source that passed its checks (``ragops promote --from S --check-source-only``): the facts a
    promotion needs from it, read with the source's own credentials, so the target's job needs none of them.

    promote.yml runs the check in a job of the source's environment and hands this record (JSON, no secrets: the
    digest, the `embedding` output and the plain `rag:service` object) to the target's jobs, which run with the
    target's credentials only (REVIEW10 F2: they previewed the source with the target's, which cannot reach dev's
    cluster or decrypt dev with a passphrase of its own). The record names the commit the source was previewed
    against; a promotion from another checkout refuses it, since "no pending changes" held for that code only.
    """

    stack: str
    digest: str
    embedding: dict[str, Any] | None
    service: dict[str, Any]
    commit: str | None
    at: str
    by: str
    preview: dict[str, int]
    """The source preview's change counts (only `same` and `read`: anything else refused the check)."""

    def to_json(self) -> str:
        """One line of JSON (a GitHub job output)."""
        return json.dumps(
            {"kind": SOURCE_RECORD_KIND, **dataclasses.asdict(self)}, sort_keys=True, separators=(",", ":")
        )

    @classmethod
    def from_json(cls, text: str, where: str) -> SourceCheck:
        """Parse a record, refusing anything else with what to do (`where`: the file it came from)."""
        how = (
            "write it with `ragops promote --from SOURCE --check-source-only --record-file F` in the source's "
            "environment (promote.yml's source-check jobs; an empty one is what GitHub passes when it withheld "
            "the job output as possibly holding a secret)"
        )
        if not text.strip():
            raise UsageError(f"{where} is empty, not a source check record: {how}.")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where} is not a source check record ({exc}): {how}.") from exc
        if not isinstance(data, dict) or data.get("kind") != SOURCE_RECORD_KIND:
            raise UsageError(f"{where} is not a source check record (no kind {SOURCE_RECORD_KIND!r}): {how}.")
        fields = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in fields if name not in data]
        if missing:
            raise UsageError(
                f"{where} is not a complete source check record (no {', '.join(missing)}): {how}."
            )
        record = cls(**{name: data[name] for name in fields})
        if not isinstance(record.service, dict) or not isinstance(record.stack, str):
            raise UsageError(f"{where} is not a source check record (bad stack or service): {how}.")
        check_digest(record.digest, record.stack)
        return record

    def check_for(self, source: str, work_dir: Path) -> None:
        """Refuse the record for a promotion from another stack, or from a checkout at another commit."""
        if self.stack != source:
            raise UsageError(
                f"The source check record is for {self.stack!r}, not {source!r}: check {source} "
                f"(`ragops promote --from {source} --check-source-only`)."
            )
        here = checkout_commit(work_dir)
        if here != self.commit:
            raise WorkflowError(
                f"Cannot promote from {source}: its check ran against commit {self.commit or '(no git checkout)'}, "
                f"this checkout is at {here or '(no git checkout)'}; "
                "its pending-changes preview holds for that code only. Check the source again from this checkout."
            )


def check_source(
    ctx: Context,
    source: str,
    *,
    on_output: OnOutput | None = None,
    on_event: OnEvent | None = None,
) -> SourceCheck:
    """The source's half of a promotion (``ragops promote --from S --check-source-only``): its digest, and no
    pending changes against this checkout's code; needs the source's credentials only."""
    if not promotion_targets(source, ctx.work_dir):
        raise UsageError(
            f"No permanent stack receives promotions from {source!r} in this checkout: the allowed promotions are "
            + (", ".join(f"{a} -> {b}" for a, b in allowed_promotions(ctx.work_dir)) or "none")
            + "."
        )
    ws = ctx.workspace()
    outputs = select(ws, source).outputs()
    digest = check_digest(outputs["imageDigest"].value if "imageDigest" in outputs else None, source)
    return _check_source_preview(ctx, ws, source, outputs, digest, on_output, on_event)


def _check_source_preview(
    ctx: Context,
    ws: Workspace,
    source: str,
    outputs: Mapping[str, Any],
    digest: str,
    on_output: OnOutput | None,
    on_event: OnEvent | None,
) -> SourceCheck:
    # The source as deployed (its last update's config), against the code checked out here.
    with deployed_config(ws, source) as source_config:
        report = run_preview(ws, source, policy_pack=None, on_output=on_output, on_event=on_event)
        if not report.ok:
            raise WorkflowError(
                f"Could not check {source!r} for pending changes; its preview failed:\n{report.error}"
            )
        if report.pending:
            changes = describe_counts(report.pending)
            raise WorkflowError(
                f"Stack {source!r} has pending changes ({changes}): what it runs is not what the code says. "
                f"Run `pulumi up -s {source}` (or merge to main) and promote again."
                + _image_mode_hint(ctx.work_dir, report)
            )
        service = _service_object(ws, source, source_config)
    return SourceCheck(
        stack=source,
        digest=digest,
        embedding=_as_object(outputs["embedding"].value) if "embedding" in outputs else None,
        service=service,
        commit=checkout_commit(ctx.work_dir),
        at=rfc3339(ctx.clock()),
        by=ctx.actor(),
        preview=dict(report.changes),
    )


def _prepare(
    ctx: Context,
    source: str,
    target: str,
    on_output: OnOutput | None,
    on_event: OnEvent | None,
    drop_secrets: Collection[str],
    checked: SourceCheck | None = None,
) -> tuple[Workspace, Any, dict[str, Any], Promotion]:
    """Every check of a promotion and the config it writes to the target (nothing written yet). With `checked`
    (a source check made elsewhere, with the source's credentials) the source stack is not touched at all."""
    check_order(source, target, ctx.work_dir)
    ws = ctx.workspace()
    if checked is None:
        outputs = select(ws, source).outputs()
        digest = check_digest(outputs["imageDigest"].value if "imageDigest" in outputs else None, source)
    else:
        checked.check_for(source, ctx.work_dir)
        digest = checked.digest
    check_copy_prerequisites(ctx, source, target, digest)
    check_target_registry_tools(ctx, ws, source, target)
    check_alerting(ws, target, ctx.work_dir)
    if checked is None:
        checked = _check_source_preview(ctx, ws, source, outputs, digest, on_output, on_event)
    source_service = checked.service

    tgt = select(ws, target)
    source_embedding = checked.embedding
    models = (source_embedding or {}).get("imageModels")
    models = list(models) if isinstance(models, list) and models else None
    target_outputs = tgt.outputs()
    before = _as_object(target_outputs["embedding"].value) if "embedding" in target_outputs else None
    where = f"Cannot promote {source} -> {target} ({digest})"
    reindex_mod.check_image_keeps(target, before, models, where=where)
    # The target may have run a newer release than the one promoted (a rollback there, a fix-forward elsewhere):
    # the same registry-schema check as a rollback's.
    target_current = target_outputs["imageDigest"].value if "imageDigest" in target_outputs else None
    ran = [
        _image_of(h)
        for h in tgt.history(show_secrets=False)
        if h.kind == "update" and h.result == "succeeded"
    ]
    check_schema(ctx, target, digest, [target_current or "", *(r for r in ran if r)], where)
    merged, copied = merge_promotable(source_service, _service_object(ws, target))
    promotion = Promotion(
        source=source,
        target=target,
        digest=digest,
        at=rfc3339(ctx.clock()),
        by=ctx.actor(),
        copied=copied,
        models=models,
        index_before=before,
    )
    values: dict[str, Any] = {IMAGE_KEY: digest, SERVICE_KEY: merged, PROMOTION_KEY: promotion.record()}
    if source_embedding is not None and source_embedding.get("model") and models is not None:
        # The model the source runs, and the others its image holds (the target may need one of them while
        # it re-indexes away from it).
        model = source_embedding["model"]
        values[reindex_mod.EMBEDDING_KEY] = {
            "model": model,
            "extraModels": [m for m in models if m != model],
        }
        copied[reindex_mod.EMBEDDING_KEY] = values[reindex_mod.EMBEDDING_KEY]
    check_secrets_kept(ws, target, drop_secrets)  # before anything is written to the target
    return ws, tgt, values, promotion


# ------------------------------------------------------------------------------------------------------ rollback

SHA256_RE = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Rollback:
    """What ``ragops rollback`` did: the stack now runs the image (and settings) of an earlier update."""

    stack: str
    digest: str
    replaced: str | None
    """The image the stack ran before (its ``imageDigest`` output)."""
    to_update: int
    at: str
    by: str
    index_before: dict[str, Any] | None = None
    warning: str | None = None
    """Printed by the CLI: the stack's alerts page nobody (`alerting.rollback_warning`), where `up` refuses."""


def _sha(ref: str | None) -> str | None:
    """The ``sha256:...`` part of an image ref: the same image under any registry it was copied to."""
    match = SHA256_RE.search(ref or "")
    return match.group(0) if match else None


def _image_of(update: UpdateSummary) -> str:
    value = (update.config or {}).get(IMAGE_KEY)
    return value.value if value is not None and isinstance(value.value, str) and not value.secret else ""


def _pick_update(
    stack: str, history: list[UpdateSummary], current: str | None, to_update: int | None, digest: str | None
) -> UpdateSummary:
    """The update to go back to: version `to_update`, the latest good one that ran `digest`, else the latest good
    one that ran another image than the current one (the previous release)."""
    good = [h for h in history if h.kind == "update" and h.result == "succeeded" and _image_of(h)]
    if to_update is not None:
        entry = next((h for h in history if h.version == to_update), None)
        versions = ", ".join(str(h.version) for h in good[:10]) or "none"
        if entry is None:
            raise UsageError(
                f"Stack {stack!r} has no update {to_update} (`pulumi stack history -s {stack}`); updates that ran "
                f"a promoted image, newest first: {versions}."
            )
        if entry not in good:
            why = (
                f"it was a {entry.kind} that {entry.result}"
                if (entry.kind, entry.result) != ("update", "succeeded")
                else "it ran a build of its checkout, not a promoted image (no rag:image)"
            )
            raise WorkflowError(
                f"Cannot roll {stack!r} back to update {to_update}: {why}. Updates that ran a promoted image, "
                f"newest first: {versions}."
            )
        return entry
    if digest is not None:
        wanted = _sha(digest)
        entry = next((h for h in good if _sha(_image_of(h)) == wanted), None)
        if entry is None:
            raise WorkflowError(
                f"Stack {stack!r} never ran {digest} successfully (its update history has no such rag:image): "
                "roll back only to a release the stack has run, or promote that build through the stacks before."
            )
        return entry
    entry = next((h for h in good if _sha(_image_of(h)) != _sha(current)), None)
    if entry is None:
        raise WorkflowError(
            f"Stack {stack!r} has no earlier successful update with another image than the one it runs "
            f"({current}): nothing to roll back to."
        )
    return entry


@dataclass(frozen=True)
class _Schema:
    ref: str
    head: str
    compatible_from: str


def _schema_of(ref: str, labels: Mapping[str, str]) -> _Schema | None:
    head, oldest = labels.get(schema_mod.LABEL_HEAD), labels.get(schema_mod.LABEL_COMPATIBLE_FROM)
    if schema_mod.sequence(head) is None or schema_mod.sequence(oldest) is None:
        return None  # built before the schema contract (0011_schema_compat)
    return _Schema(ref, str(head), str(oldest))


def check_schema(
    ctx: Context,
    stack: str,
    image: str,
    deployed: list[str],
    where: str,
    database_schema: str | None = None,
    own_repository: str | None = None,
) -> None:
    """Refuse a rollback whose release cannot start on the stack's registry database (EYES_OPS3 O5).

    The database is at least at the newest schema head of the images the stack has run (``deployed``: the
    current image first, then every image of its successful updates: each migrated it at start-up), unless the
    operator names its revision (``database_schema``, e.g. after restoring a backup). The target starts when its
    schema head is at or after that revision, or at or after the revision's ``compatible_from``; both come from
    the images' labels (infra/schema.py). Images the registry no longer serves are skipped (older releases);
    the current one and the target must be readable.

    With `own_repository` (a rollback: the stack's own registry, where the copy of every image it ran stays,
    tagged `sha256-<hex>` for good), each image is read there first, then from the registry its ref names: a
    promoted stack's history names the *source's* registry (dev's), whose retention expires a build
    `supersededBuildDays` after its push, so a rollback to an older release was refused on a read of dev's
    registry although the stack's own copy was there (REVIEW10 F3).
    """
    read_ref = ctx.image_labels or schema_mod.read_image_labels

    def read(ref: str) -> Mapping[str, str]:
        sha = _sha(ref)
        own_ref = f"{own_repository}@{sha}" if own_repository and sha else None
        if own_ref is not None and own_ref != ref:
            with contextlib.suppress(schema_mod.ImageLabelError):
                return read_ref(own_ref)
        return read_ref(ref)

    def labels(ref: str) -> Mapping[str, str]:
        try:
            return read(ref)
        except schema_mod.ImageLabelError as exc:
            raise WorkflowError(
                f"{where}: cannot check that the release can run on the stack's registry schema: {exc}"
            ) from exc

    target = _schema_of(image, labels(image))
    seen = {_sha(image)}
    known: list[_Schema] = []
    for position, ref in enumerate(deployed):
        if _sha(ref) in seen or not ref:
            continue
        seen.add(_sha(ref))
        if position == 0:
            found = _schema_of(ref, labels(ref))
        else:
            try:
                found = _schema_of(ref, read(ref))
            except schema_mod.ImageLabelError:
                continue  # no longer in its registry: an old release, and the current one bounds the schema
        if found is not None:
            known.append(found)
    if database_schema is not None:
        oldest = next((k.compatible_from for k in known if k.head == database_schema), None)
        newest = _Schema(f"--database-schema {database_schema}", database_schema, oldest or database_schema)
    elif known:
        newest = max(
            known, key=lambda k: (schema_mod.sequence(k.head), schema_mod.sequence(k.compatible_from))
        )
    else:
        return  # nothing the stack ran carries the labels: the database predates the contract
    how = (
        "Nothing was changed. Fix forward instead (a release with the fix, promoted dev -> staging -> prod), or "
        "restore the registry from a backup taken before that migration and roll back again with "
        "--database-schema <the restored revision> (docs/runbooks.md, 'Rolling back a release')."
    )
    if target is None:
        raise WorkflowError(
            f"{where}: that image was built before the registry schema contract (it has no "
            f"{schema_mod.LABEL_HEAD} label), so it refuses to start on any registry database at "
            f"0011_schema_compat or newer, and the stack's database is at {newest.head} ({newest.ref}). {how}"
        )
    head, floor = schema_mod.sequence(target.head), schema_mod.sequence(newest.compatible_from)
    if head is None or floor is None:
        return
    if head >= (schema_mod.sequence(newest.head) or 0) or head >= floor:
        return
    raise WorkflowError(
        f"{where}: its registry schema is {target.head}, but the stack's database is at {newest.head} "
        f"({newest.ref}), which only releases at schema {newest.compatible_from} or newer may run on: every pod "
        f"of that release would refuse to start. {how}"
    )


def rollback(
    ctx: Context,
    stack: str,
    *,
    to_update: int | None = None,
    digest: str | None = None,
    database_schema: str | None = None,
    policy_pack: str | None = POLICY_PACK,
    on_output: OnOutput | None = None,
    on_event: OnEvent | None = None,
    drop_secrets: Collection[str] = (),
) -> Rollback:
    """``ragops rollback --stack S [--to-update N | --digest D]``: run an earlier release again, through ``up``.

    From the backend's update history (``pulumi stack history``: each update's config) it takes the chosen update's
    ``rag:image``, ``rag:embedding``, promotable ``rag:service`` settings and promotion record, adds
    ``rollback`` = {toUpdate, replaced, at, by} to that record, writes them like a promotion does and runs
    ``pulumi up`` with the policy pack. API and worker move together (both run ``rag:image``), and state, the
    ``imageDigest``/``promotion`` outputs (``ragops status``) and the nightly drift check stay true; the next
    ``ragops up`` keeps the rolled-back release (``deploy.keep_promoted``). Refused before anything is written when
    the image cannot serve the stack's current index (its models, as recorded when it was promoted), or cannot
    start on the stack's registry database (`check_schema`: its schema labels against those of the images the
    stack has run, or ``database_schema``, the revision an operator read from a restored database).
    """
    if to_update is not None and digest is not None:
        raise UsageError("--to-update and --digest name the release two ways: pass one of them.")
    if digest is not None and _sha(digest) is None:
        raise UsageError(
            f"--digest {digest!r} is not an image digest (sha256:<64 hex>, or REGISTRY/REPO@sha256:...)."
        )
    ws = ctx.workspace()
    st = select(ws, stack)
    outputs = st.outputs()
    current = outputs["imageDigest"].value if "imageDigest" in outputs else None
    if database_schema is not None and schema_mod.sequence(database_schema) is None:
        raise UsageError(
            f"--database-schema {database_schema!r} is not a registry schema revision (e.g. 0011_schema_compat: "
            "the revision in the registry database's alembic_version table)."
        )
    history = st.history(show_secrets=False)
    entry = _pick_update(stack, history, current, to_update, digest)
    image = _image_of(entry)
    if _sha(image) == _sha(current):
        raise WorkflowError(
            f"Stack {stack!r} already runs {image} (update {entry.version}): nothing to roll back."
        )
    where = f"Cannot roll {stack} back to update {entry.version} ({image})"
    ran = [_image_of(h) for h in history if h.kind == "update" and h.result == "succeeded" and _image_of(h)]
    own = current.rsplit("@", 1)[0] if current and _sha(current) else None
    check_schema(ctx, stack, image, [current or "", *ran], where, database_schema, own_repository=own)

    recorded = entry.config or {}
    promotion = _as_object(recorded[PROMOTION_KEY].value) if PROMOTION_KEY in recorded else None
    models = (promotion or {}).get("models")
    models = list(models) if isinstance(models, list) and models else None
    before = _as_object(outputs["embedding"].value) if "embedding" in outputs else None
    reindex_mod.check_image_keeps(stack, before, models, where=where)
    done = Rollback(
        stack=stack,
        digest=image,
        replaced=current,
        to_update=entry.version or 0,
        at=rfc3339(ctx.clock()),
        by=ctx.actor(),
        index_before=before,
        warning=rollback_warning(ws, stack, ctx.work_dir),
    )
    record = dict(promotion) if promotion else {"from": stack, "digest": image, "at": done.at, "by": done.by}
    record["rollback"] = {"toUpdate": done.to_update, "replaced": current, "at": done.at, "by": done.by}
    values: dict[str, Any] = {IMAGE_KEY: image, PROMOTION_KEY: record}
    embedding = (
        _as_object(recorded[reindex_mod.EMBEDDING_KEY].value)
        if reindex_mod.EMBEDDING_KEY in recorded
        else None
    )
    if embedding is not None:
        values[reindex_mod.EMBEDDING_KEY] = embedding
    values[SERVICE_KEY], _ = merge_promotable(
        _service_object(ws, stack, recorded), _service_object(ws, stack)
    )
    check_secrets_kept(ws, stack, drop_secrets)
    check_registry_recoverable(ws, stack)  # from the state alone: before anything is written
    if done.warning is not None and on_output is not None:
        on_output(done.warning)  # before the up's own output: the pager gap is seen while the rollback runs
    write_checked(ws, stack, values)
    st.up(
        policy_packs=[policy_pack] if policy_pack else None,
        on_output=on_output,
        on_event=on_event,
        message=f"ragops rollback {stack} to update {done.to_update}: {image} (was {current}) by {done.by}",
    )
    return done
