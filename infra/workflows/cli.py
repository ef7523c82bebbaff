"""``ragops``: the delivery CLI (Typer + rich) over the workflow functions.

Exit codes: 0 success; 1 refused or failed (a promotion refusal, drift, a failed preview, up or smoke check);
2 usage (bad options, an invalid stack name, TTL or preview domain, a promotion order that is not allowed);
3 `reconcile` only: the reconciliation did not run or its report never came (kubectl failed or timed out). Long
operations stream Pulumi's output and show a spinner naming the resource being worked on. A failed Pulumi command
prints one red line, the CLI's stderr (nothing else) and, for the common set-up mistakes, a one-line hint.

Argument shapes: every command that acts on one stack takes `--stack/-s` (`ephemeral up/destroy` also accept
`--name`); `promote` takes `--from/--to`; `--quiet/-q` silences Pulumi's own output.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from pulumi.automation import EngineEvent, StackNotFoundError
from pulumi.automation.errors import CommandError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from typer.core import TyperOption

from infra.workflows import drift as drift_mod
from infra.workflows import ephemeral as ephemeral_mod
from infra.workflows import promote as promote_mod
from infra.workflows import qdrant_drain as qdrant_drain_mod
from infra.workflows import reach
from infra.workflows import reindex as reindex_mod
from infra.workflows import restore as restore_mod
from infra.workflows.comment import render_comment
from infra.workflows.deploy import deploy, keep_promoted
from infra.workflows.errors import CREATING_COMMANDS, MISSING_STACK, describe, stderr_of
from infra.workflows.preview import PreviewReport, run_preview
from infra.workflows.stacks import (
    POLICY_PACK,
    REPO_ROOT,
    Context,
    OnEvent,
    OnOutput,
    UsageError,
    WorkflowError,
    describe_counts,
    parse_rfc3339,
)

_display_type_rich = TyperOption.display_type_rich


def _flag_type_rich(self: TyperOption, ctx: Any) -> str | None:
    """The type column of the rich help: none for a flag, which takes no value.

    typer 0.29.2 (click 8.5.1) labels every option with its annotation's type in the rich help, flags included,
    so each ``--quiet``, ``--policy/--no-policy`` and ``--help`` read ``<bool>`` as if it took one; its plain
    help, like click's own, prints no type for a flag. Value-taking options keep theirs (``<dir>``, ``<str>``).
    """
    if self.is_flag and self.metavar is None:
        return None
    return _display_type_rich(self, ctx)


TyperOption.display_type_rich = _flag_type_rich  # type: ignore[method-assign]

app = typer.Typer(
    name="ragops",
    help="Deliver the RAG platform: PR previews, promotions dev -> staging -> prod, ephemeral stacks, drift checks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
ephemeral_app = typer.Typer(help="Short-lived per-PR stacks with guaranteed teardown.", no_args_is_help=True)
app.add_typer(ephemeral_app, name="ephemeral")
reindex_app = typer.Typer(
    help="Blue/green re-index of a deployed service (new model or chunking) through its admin API.",
    no_args_is_help=True,
)
app.add_typer(reindex_app, name="reindex")

console = Console(stderr=True)
T = TypeVar("T")

StackOpt = Annotated[str, typer.Option("--stack", "-s", help="Stack name (dev, staging, prod, pr-123...).")]
EphemeralOpt = Annotated[
    str, typer.Option("--stack", "-s", "--name", help="Ephemeral stack name, e.g. pr-123.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Do not stream Pulumi's own output.")]


def package_version() -> str:
    """The installed rag-platform version (ragops ships with it)."""
    try:
        return metadata.version("rag-platform")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"ragops {package_version()}")
        raise typer.Exit(0)


#: The checkout of this invocation (its stack files say which stacks are permanent), for `_run`'s hints.
_checkout: ContextVar[Path | None] = ContextVar("ragops_checkout", default=None)
#: This invocation's Context and top-level command (`up`, `status`, `ephemeral`, ...), for `_run`'s hints.
_context: ContextVar[Context | None] = ContextVar("ragops_context", default=None)
_command: ContextVar[str | None] = ContextVar("ragops_command", default=None)


@app.callback()
def _root(
    ctx: typer.Context,
    work_dir: Annotated[
        Path, typer.Option("--work-dir", help="Project directory holding Pulumi.yaml.", file_okay=False)
    ] = REPO_ROOT,
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    """Deliver the RAG platform with the Pulumi Automation API (any backend; no Pulumi Cloud features)."""
    if ctx.obj is None:  # tests hand in a Context with a fake Pulumi runner
        ctx.obj = Context(work_dir=work_dir)
    _checkout.set(ctx.obj.work_dir)
    _context.set(ctx.obj)
    _command.set(ctx.invoked_subcommand)


@contextmanager
def _progress(title: str, quiet: bool) -> Iterator[tuple[OnOutput, OnEvent]]:
    """A spinner naming the current resource, with Pulumi's output printed above it (on a terminal only: in a pipe
    or a CI log the spinner has nothing to redraw, and its Live display left a blank line before an error)."""
    if not console.is_terminal:

        def plain_output(line: str) -> None:
            if not quiet:
                console.print(line, markup=False, highlight=False)

        yield plain_output, lambda _event: None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.completed} resources"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(title, total=None)

        def on_output(line: str) -> None:
            if not quiet:
                progress.console.print(line, markup=False, highlight=False)

        def on_event(event: EngineEvent) -> None:
            if event.resource_pre_event is not None:
                meta = event.resource_pre_event.metadata
                op = getattr(meta.op, "value", meta.op)
                progress.update(task, description=f"{title}: {op} {meta.urn.rsplit('::', 1)[-1]}")
            elif event.res_outputs_event is not None:
                progress.advance(task)

        yield on_output, on_event


def _run(action: Callable[[], T], roles: Mapping[str, str] | None = None) -> T:
    """Map workflow errors to exit codes with a readable message (`roles`: what each stack of the command is,
    for the hint when one is missing)."""
    try:
        return action()
    except UsageError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from exc
    except reach.SmokeFailure as exc:
        console.print(f"[red]smoke check failed:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from exc
    except reindex_mod.ReindexFailure as exc:
        console.print(f"[red]re-index failed:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from exc
    except WorkflowError as exc:
        console.print(f"[red]refused:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from exc
    except CommandError as exc:
        failure = describe(
            exc, roles, _checkout.get(), creates=_command_creates_stacks(), backend=_backend_url(exc)
        )
        # soft_wrap: no line breaks inserted at the console's width (80 in a CI log), which split a long backend
        # URL or path mid-word and made it impossible to copy.
        console.print(f"[red]pulumi failed: {escape(failure.headline)}[/]", highlight=False, soft_wrap=True)
        if failure.stderr and failure.stderr != failure.headline:
            console.print(failure.stderr, markup=False, highlight=False, soft_wrap=True)
        if failure.hint:
            console.print(f"[yellow]hint:[/] {escape(failure.hint)}", highlight=False, soft_wrap=True)
        _print_notes(exc)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt as exc:
        console.print("[red]interrupted[/]")
        _print_notes(exc)
        raise typer.Exit(1) from exc
    except FileNotFoundError as exc:
        if exc.filename and Path(str(exc.filename)).name == "pulumi":
            console.print(
                "[red]error:[/] the Pulumi CLI is not on PATH (https://www.pulumi.com/docs/install/)."
            )
            raise typer.Exit(1) from exc
        raise


def _command_creates_stacks() -> bool:
    """Whether the running ragops command deploys a stack the backend may not have yet (errors.CREATING_COMMANDS:
    `ragops up`, `ragops preview`), as opposed to reading or operating a deployed one."""
    command = _command.get()
    return command is None or command in CREATING_COMMANDS


def _backend_url(exc: CommandError) -> str | None:
    """The state backend this invocation talks to, for a missing stack's hint: PULUMI_BACKEND_URL (the
    context's environment, then ours), else what `pulumi whoami` says (Automation API `who_am_i().url`); None
    when neither answers. Only asked about when the stack was missing."""
    if not MISSING_STACK.search(stderr_of(exc)):
        return None
    context = _context.get()
    url = dict((context.env_vars if context else None) or {}).get("PULUMI_BACKEND_URL") or os.environ.get(
        "PULUMI_BACKEND_URL"
    )
    if url or context is None:
        return url or None
    try:
        return context.workspace().who_am_i().url or None
    except Exception:  # best effort: the hint then names no URL
        return None


def _print_notes(exc: BaseException) -> None:
    """The notes a workflow added to an error (e.g. whether a failed ephemeral stack was torn down)."""
    for note in getattr(exc, "__notes__", []):
        console.print(note, markup=False, highlight=False)


DropSecretOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--drop-secret",
        help="A secret config key the stack's last update ran with that this update removes on purpose "
        "(repeatable); without it such an update is refused.",
    ),
]


@app.command()
def preview(
    ctx: typer.Context,
    stack: StackOpt,
    comment_file: Annotated[
        Path | None,
        typer.Option("--comment-file", help="Write the Markdown PR comment here.", dir_okay=False),
    ] = None,
    policy: Annotated[bool, typer.Option("--policy/--no-policy", help=f"Run the {POLICY_PACK} pack.")] = True,
    quiet: QuietOpt = False,
    drop_secret: DropSecretOpt = None,
) -> None:
    """`pulumi preview --diff` with the policy pack, summarised as a PR comment (exit 1 if it fails, also when the
    update it previews would drop a secret key the last update ran with: `ragops up` would refuse it)."""
    context: Context = ctx.obj

    def action() -> Any:
        ws = context.workspace()
        keep_promoted(
            ws, stack
        )  # preview what `ragops up` would deploy: a staging/prod checkout names no image
        try:
            # `ragops up`'s own check: a PR whose merge's `up` would be refused must not get a green comment.
            _check_models_kept(context, stack)
        except WorkflowError as exc:
            return PreviewReport(stack=stack, changes={}, steps=[], violations=[], error=str(exc))
        with _progress(f"preview {stack}", quiet) as (on_output, on_event):
            return run_preview(
                ws,
                stack,
                policy_pack=POLICY_PACK if policy else None,
                on_output=on_output,
                on_event=on_event,
                drop_secrets=drop_secret or (),
            )

    report = _run(action)
    comment = render_comment(report)
    if comment_file is not None:
        comment_file.write_text(comment + "\n", encoding="utf-8")
    pending = describe_counts(report.pending) or "no changes"
    if not report.ok:
        console.print(f"[red]preview of {stack} failed[/] ({pending})")
        if report.refusal:  # the program refused the config: its one line, not the CLI's whole output
            console.print(report.refusal, markup=False, highlight=False)
        elif report.error:
            console.print(report.error, markup=False, highlight=False)
        raise typer.Exit(1)
    console.print(f"preview of {stack}: {pending}", highlight=False)
    # REVIEW10 F6 on a laptop: a checkout made under umask 002 shows the image as rebuilt with the same content.
    note = promote_mod.image_modes_note(context.work_dir, report)
    if note:
        console.print(
            f"[yellow]note:[/] the image build is among the changes, and {escape(note)} An `up` from this "
            f"checkout would build and deploy a new image; fix the modes ({escape(promote_mod.FIX_MODES)}) and "
            "preview again.",
            highlight=False,
        )


ReindexTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--reindex-timeout",
        min=0,
        help="When the update changes the embedding model or chunking: seconds to follow the re-index.",
    ),
]


@app.command()
def up(
    ctx: typer.Context,
    stack: StackOpt,
    policy: Annotated[bool, typer.Option("--policy/--no-policy", help=f"Run the {POLICY_PACK} pack.")] = True,
    reindex_timeout: ReindexTimeoutOpt = 3600.0,
    quiet: QuietOpt = False,
    drop_secret: DropSecretOpt = None,
) -> None:
    """`pulumi up` a stack with the policy pack (CI runs this on dev for every push to main); an update that
    changes the embedding model or chunking is followed until the service's re-index has switched."""
    context: Context = ctx.obj

    def action() -> tuple[dict[str, int], dict[str, Any] | None]:
        # First, so the image check below sees the promoted image a staging/prod checkout does not name.
        keep_promoted(context.workspace(), stack)
        before = _check_models_kept(context, stack)
        with _progress(f"up {stack}", quiet) as (on_output, on_event):
            changes = deploy(
                context,
                stack,
                policy_pack=POLICY_PACK if policy else None,
                on_output=on_output,
                on_event=on_event,
                drop_secrets=drop_secret or (),
            )
        return changes, before

    changes, before = _run(action)
    summary = describe_counts(changes) or "no changes"
    console.print(f"up {stack}: {summary}", highlight=False)
    _follow_index_change(context, stack, before, reindex_timeout)


def _check_models_kept(context: Context, stack: str) -> dict[str, Any] | None:
    """Refuse (WorkflowError) an update whose image would lack the model the deployed index was built with
    (reindex.check_image_keeps); gives the deployed ``embedding`` output (None: not deployed yet). Run by `up` and,
    so that a PR's comment is red when its merge's `up` would be refused, by `preview`."""
    before = _deployed_embedding(context, stack)
    if before is not None:
        planned = reindex_mod.planned_image_models(
            context.workspace().get_all_config(stack), _declared_embedding(context)
        )
        reindex_mod.check_image_keeps(
            stack, before, planned, where=f"rag:embedding.extraModels in Pulumi.{stack}.yaml"
        )
    return before


def _deployed_embedding(context: Context, stack: str) -> dict[str, Any] | None:
    """The stack's ``embedding`` output before an update (None: not deployed yet, or from before the output)."""
    try:
        return reach.read_info(context, stack).embedding
    except StackNotFoundError:
        return None  # the update itself reports the missing stack


def _declared_embedding(context: Context) -> dict[str, Any] | None:
    """Pulumi.yaml's declared ``embedding`` default in the project directory (stack files override it)."""
    path = Path(context.work_dir) / "Pulumi.yaml"
    try:
        project = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError:
        return None
    declared = (project.get("config") or {}).get("embedding")
    default = declared.get("default") if isinstance(declared, dict) else None
    return default if isinstance(default, dict) else None


def _follow_index_change(context: Context, stack: str, before: dict[str, Any] | None, timeout: float) -> None:
    """After an update: when it changed the index config, follow (or start) the re-index to its switch."""

    def action() -> dict[str, Any] | None:
        info = reach.read_info(context, stack)
        change = reindex_mod.index_change(before, info.embedding)
        if change is None:
            return None
        old, new = change
        console.print(
            f"{stack}: index config changed {reindex_mod.describe_config(old)} -> "
            f"{reindex_mod.describe_config(new)}; search keeps serving the old index until the re-index switches",
            highlight=False,
        )
        endpoint = reindex_mod.endpoint_of(info)
        with endpoint.client() as client, _reindex_progress(f"re-index {stack}") as on_status:
            return reindex_mod.converge(client, new, on_status=on_status, timeout_seconds=timeout)

    try:
        status = _run(action)
    except typer.Exit:
        console.print(
            f"[yellow]hint:[/] search on {stack} still serves the previous index. Fix the cause, then "
            f"`ragops reindex start -s {stack} --model ... --chunk-size ...`, or deploy the previous config again.",
            highlight=False,
        )
        raise
    if status is not None:
        typer.echo(reindex_mod.summary(status))


@app.command()
def promote(
    ctx: typer.Context,
    source: Annotated[
        str, typer.Option("--from", help="Source stack (environment dev or staging, e.g. dev).")
    ],
    target: Annotated[
        str | None, typer.Option("--to", help="Target stack (the next environment, e.g. staging).")
    ] = None,
    reindex_timeout: ReindexTimeoutOpt = 3600.0,
    quiet: QuietOpt = False,
    drop_secret: DropSecretOpt = None,
    preview_only: Annotated[
        bool,
        typer.Option(
            "--preview-only",
            help="Change nothing: run every check, then preview the target with the promoted config "
            "(what an approver reads before the promotion runs).",
        ),
    ] = False,
    comment_file: Annotated[
        Path | None,
        typer.Option(
            "--comment-file", help="With --preview-only: write the Markdown summary here.", dir_okay=False
        ),
    ] = None,
    check_source_only: Annotated[
        bool,
        typer.Option(
            "--check-source-only",
            help="Without --to: check only the source (its digest, no pending changes) with the source's "
            "credentials, and write what the target's promotion needs to --record-file.",
        ),
    ] = False,
    record_file: Annotated[
        Path | None,
        typer.Option(
            "--record-file", help="With --check-source-only: write the record here.", dir_okay=False
        ),
    ] = None,
    checked_source: Annotated[
        Path | None,
        typer.Option(
            "--checked-source",
            help="A --check-source-only record of the source (made from this commit): the source stack is then "
            "not read at all, so this job needs the target's credentials only.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    record_target_version: Annotated[
        Path | None,
        typer.Option(
            "--record-target-version",
            help="With --preview-only: write the target's last update version (read before its preview) here.",
            dir_okay=False,
        ),
    ] = None,
    previewed_target_version: Annotated[
        Path | None,
        typer.Option(
            "--previewed-target-version",
            help="A --record-target-version file of the preview the approvers read: refuse when the target was "
            "updated since.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Deploy the source stack's image digest (and promotable settings) to the next stack; a changed embedding
    model or chunking is followed until the target's re-index has switched."""
    context: Context = ctx.obj
    if check_source_only:
        _check_promotion_source(context, source, target, quiet, record_file, checked_source, preview_only)
        return
    if record_file is not None:
        raise typer.BadParameter("--record-file goes with --check-source-only.", param_hint="--record-file")
    if target is None:
        raise typer.BadParameter("Name the target stack (or check the source only: --check-source-only).")
    checked = _read_source_check(checked_source)
    if preview_only:
        if previewed_target_version is not None:
            raise typer.BadParameter(
                "--previewed-target-version goes with the promotion, not --preview-only.",
                param_hint="--previewed-target-version",
            )
        _preview_promotion(
            context, source, target, quiet, drop_secret or (), comment_file, checked, record_target_version
        )
        return
    if comment_file is not None:
        raise typer.BadParameter("--comment-file goes with --preview-only.", param_hint="--comment-file")
    if record_target_version is not None:
        raise typer.BadParameter(
            "--record-target-version goes with --preview-only.", param_hint="--record-target-version"
        )
    previewed = _read_previewed_version(previewed_target_version, target)

    def action() -> promote_mod.Promotion:
        promote_mod.check_order(source, target, context.work_dir)  # refuse before touching Pulumi
        with _progress(f"promote {source} -> {target}", quiet) as (on_output, on_event):
            return promote_mod.promote(
                context,
                source,
                target,
                on_output=on_output,
                on_event=on_event,
                drop_secrets=drop_secret or (),
                checked=checked,
                previewed_version=previewed,
            )

    done = _run(action, roles={source: "the source of the promotion", target: "the target of the promotion"})
    console.print(
        f"promoted {done.digest} {done.source} -> {done.target} (by {done.by} at {done.at})", highlight=False
    )
    _follow_index_change(context, target, done.index_before, reindex_timeout)


PREVIEWED_VERSION_KIND = "ragops-previewed-target"


def _read_previewed_version(path: Path | None, target: str) -> int | None:
    """The `--previewed-target-version` file's version for `target`, or None; anything else is a usage error."""
    if path is None:
        return None
    how = (
        f"write it with `ragops promote --to {target} --preview-only --record-target-version F` "
        "(promote.yml's preview job)"
    )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise typer.BadParameter(f"{path} is not a previewed-target record ({exc}): {how}.") from None
    if not isinstance(data, dict) or data.get("kind") != PREVIEWED_VERSION_KIND:
        raise typer.BadParameter(f"{path} is not a previewed-target record: {how}.")
    if data.get("stack") != target:
        raise typer.BadParameter(
            f"{path} records the preview of {data.get('stack')!r}, not {target!r}: {how}."
        )
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise typer.BadParameter(f"{path} has no update version ({version!r}): {how}.")
    return version


def _read_source_check(path: Path | None) -> promote_mod.SourceCheck | None:
    """The `--checked-source` record, or None; a file that is no record is a usage error (exit 2)."""
    if path is None:
        return None
    return _run(lambda: promote_mod.SourceCheck.from_json(path.read_text(encoding="utf-8"), str(path)))


def _check_promotion_source(
    context: Context,
    source: str,
    target: str | None,
    quiet: bool,
    record_file: Path | None,
    checked_source: Path | None,
    preview_only: bool,
) -> None:
    """`ragops promote --from S --check-source-only --record-file F`: the source's half of a promotion, run with
    the source's credentials (promote.yml's source-check job); F is what `--checked-source` reads."""
    if target is not None or checked_source is not None or preview_only:
        raise typer.BadParameter(
            "--check-source-only checks the source for every target: without --to, --checked-source or "
            "--preview-only.",
            param_hint="--check-source-only",
        )
    if record_file is None:
        raise typer.BadParameter("--check-source-only writes its record to --record-file.")

    def action() -> promote_mod.SourceCheck:
        with _progress(f"check promotion source {source}", quiet) as (on_output, on_event):
            return promote_mod.check_source(context, source, on_output=on_output, on_event=on_event)

    checked = _run(action, roles={source: "the source of the promotion"})
    record_file.write_text(checked.to_json() + "\n", encoding="utf-8")
    console.print(
        f"promotion source {source} checked: {checked.digest}, no pending changes "
        f"({describe_counts(checked.preview) or 'nothing previewed'})",
        highlight=False,
        soft_wrap=True,  # the digest stays one copyable line
    )


def _preview_promotion(
    context: Context,
    source: str,
    target: str,
    quiet: bool,
    drop_secrets: Collection[str],
    comment_file: Path | None,
    checked: promote_mod.SourceCheck | None = None,
    version_file: Path | None = None,
) -> None:
    """`ragops promote --preview-only`: the target's preview with the promoted config; exit 1 when it fails. With
    `version_file`, the target's last update version, read before the preview, goes there (the approved job's
    `--previewed-target-version` refuses a target updated since: REVIEW_INFRA20 R2)."""

    def action() -> PreviewReport:
        promote_mod.check_order(source, target, context.work_dir)
        if version_file is not None:
            version = promote_mod.last_update_version(context.workspace(), target)
            record = {"kind": PREVIEWED_VERSION_KIND, "stack": target, "version": version}
            version_file.write_text(json.dumps(record, sort_keys=True) + "\n", encoding="utf-8")
        with _progress(f"preview promote {source} -> {target}", quiet) as (on_output, on_event):
            return promote_mod.preview_promotion(
                context,
                source,
                target,
                on_output=on_output,
                on_event=on_event,
                drop_secrets=drop_secrets,
                checked=checked,
            )[1]

    report = _run(
        action, roles={source: "the source of the promotion", target: "the target of the promotion"}
    )
    if comment_file is not None:
        comment_file.write_text(render_comment(report) + "\n", encoding="utf-8")
    pending = describe_counts(report.pending) or "no changes"
    if not report.ok:
        console.print(f"[red]preview of promote {source} -> {target} failed[/] ({pending})")
        console.print(report.refusal or report.error or "", markup=False, highlight=False)
        raise typer.Exit(1)
    console.print(f"preview of promote {source} -> {target}: {pending} on {target}", highlight=False)


@app.command("promotion-targets")
def promotion_targets(
    ctx: typer.Context,
    source: Annotated[str, typer.Option("--from", help="Source stack, e.g. dev.")],
) -> None:
    """Print, as a JSON list, the stacks SOURCE may promote to, read from the committed stack files (promote.yml's
    jobs fan out over it)."""
    context: Context = ctx.obj
    targets = _run(lambda: promote_mod.promotion_targets(source, context.work_dir))
    if not targets:
        console.print(
            f"[red]refused:[/] no permanent stack receives promotions from {source!r} in this checkout",
            highlight=False,
        )
        raise typer.Exit(1)
    typer.echo(json.dumps(targets, separators=(",", ":")))


@app.command()
def rollback(
    ctx: typer.Context,
    stack: StackOpt,
    to_update: Annotated[
        int | None,
        typer.Option(
            "--to-update",
            min=1,
            help="The update (`pulumi stack history` version) whose release to run again.",
        ),
    ] = None,
    digest: Annotated[
        str | None,
        typer.Option(
            "--digest", help="The image digest to run again (sha256:... or REGISTRY/REPO@sha256:...)."
        ),
    ] = None,
    database_schema: Annotated[
        str | None,
        typer.Option(
            "--database-schema",
            help="The registry database's schema revision when it is not what the stack's releases left (after "
            "restoring a backup): the release must be able to run on it.",
        ),
    ] = None,
    reindex_timeout: ReindexTimeoutOpt = 3600.0,
    quiet: QuietOpt = False,
    drop_secret: DropSecretOpt = None,
) -> None:
    """Run an earlier release of the stack again (default: the one before the current image) through `up` with
    the policy pack: API and worker together, recorded in the stack's promotion record. Refused before anything
    changes when that release cannot run on the stack's registry schema (docs/runbooks.md)."""
    context: Context = ctx.obj

    def action() -> promote_mod.Rollback:
        with _progress(f"rollback {stack}", quiet) as (on_output, on_event):
            return promote_mod.rollback(
                context,
                stack,
                to_update=to_update,
                digest=digest,
                database_schema=database_schema,
                on_output=on_output,
                on_event=on_event,
                drop_secrets=drop_secret or (),
            )

    done = _run(action)
    console.print(
        f"rolled {done.stack} back to update {done.to_update}: {done.digest} (was {done.replaced}; "
        f"by {done.by} at {done.at})",
        highlight=False,
    )
    if done.warning is not None:
        console.print(done.warning, style="bold red", markup=False, highlight=False, soft_wrap=True)
    _follow_index_change(context, stack, done.index_before, reindex_timeout)


@app.command()
def drift(
    ctx: typer.Context,
    stack: StackOpt,
    report_file: Annotated[
        Path | None, typer.Option("--report-file", help="Append the report here (e.g. $GITHUB_STEP_SUMMARY).")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """`pulumi refresh --preview-only --expect-no-changes`; exit 1 with a report when the stack drifted."""
    context: Context = ctx.obj

    def action() -> drift_mod.DriftReport:
        with _progress(f"drift {stack}", quiet) as (on_output, on_event):
            return drift_mod.check_drift(context, stack, on_output=on_output, on_event=on_event)

    report = _run(action)
    text = report.render()
    if report_file is not None:
        with report_file.open("a", encoding="utf-8") as fh:
            fh.write(f"```text\n{text}\n```\n")
    typer.echo(text)
    if report.has_drift:
        raise typer.Exit(1)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@ephemeral_app.command("up")
def ephemeral_up(
    ctx: typer.Context,
    name: EphemeralOpt,
    ttl: Annotated[
        str, typer.Option("--ttl", help="Lifetime: s/m/h/d units, e.g. 24h, 1d12h (max 7d).")
    ] = "24h",
    owner: Annotated[
        str | None, typer.Option("--owner", help="Owner to record (default: the actor).")
    ] = None,
    domain: Annotated[
        str | None,
        typer.Option(
            "--domain",
            envvar=ephemeral_mod.DOMAIN_ENV,
            help="Preview DNS zone: the stack is served at https://NAME.DOMAIN (wildcard record to the gateway).",
        ),
    ] = None,
    comment_file: Annotated[
        Path | None,
        typer.Option(
            "--comment-file", help="Write a Markdown PR comment with the stack's URL here.", dir_okay=False
        ),
    ] = None,
    namespace_mode: Annotated[
        str | None,
        typer.Option(
            "--namespace-mode",
            envvar=ephemeral_mod.NAMESPACE_MODE_ENV,
            help="rag:namespaceMode of the PR stack: create (default), or patch/existing where deployers may "
            "not create namespaces.",
        ),
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace",
            envvar=ephemeral_mod.NAMESPACE_ENV,
            help="rag:namespace of the PR stack; {name} becomes the stack name (default: {name}).",
        ),
    ] = None,
    quiet: QuietOpt = False,
    drop_secret: DropSecretOpt = None,
) -> None:
    """Create/update an ephemeral stack and `up` it; tear it down if that fails or is interrupted (a stack whose
    last update ran with a secret key the template lacks is refused first, unless `--drop-secret` names it)."""
    context: Context = ctx.obj

    def action() -> ephemeral_mod.EphemeralStack:
        ephemeral_mod.validate_new_name(name, context.work_dir)
        ephemeral_mod.parse_ttl(ttl)
        # A bad domain or namespace: refused before any Pulumi call.
        ephemeral_mod.template_config(
            context.work_dir, name, domain=domain, namespace_mode=namespace_mode, namespace=namespace
        )
        # A cancelled CI job gets SIGTERM: turn it into KeyboardInterrupt so the teardown still runs.
        # (Signal handlers can only be installed from the main thread.)
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None
        try:
            with _progress(f"ephemeral up {name}", quiet) as (on_output, on_event):
                return ephemeral_mod.up(
                    context,
                    name,
                    ttl,
                    owner=owner,
                    domain=domain,
                    namespace_mode=namespace_mode,
                    namespace=namespace,
                    on_output=on_output,
                    on_event=on_event,
                    drop_secrets=drop_secret or (),
                )
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, previous)

    record = _run(action)
    info = _run(lambda: reach.read_info(context, name))
    console.print(f"ephemeral stack {record.name} is up until {record.expires_at} (owner {record.owner})")
    typer.echo(f"url: {info.url}")
    if comment_file is not None:
        comment_file.write_text(
            f"<!-- ragops-ephemeral:{name} -->\n### Preview stack `{name}`\n\n"
            f"- URL: {info.url}\n- image: `{info.image}`\n- expires: {record.expires_at} (owner {record.owner})\n"
            f"- API key: `pulumi stack output apiKeys --show-secrets -s {name}`\n",
            encoding="utf-8",
        )


@ephemeral_app.command("destroy")
def ephemeral_destroy(
    ctx: typer.Context,
    name: EphemeralOpt,
    force: Annotated[
        bool, typer.Option("--force", help="Destroy even without a rag:ephemeral record (a killed first up).")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Destroy an ephemeral stack's resources and remove it; already gone is success."""
    context: Context = ctx.obj

    def action() -> bool:
        ephemeral_mod.validate_name(name, context.work_dir)
        with _progress(f"ephemeral destroy {name}", quiet) as (on_output, on_event):
            return ephemeral_mod.destroy(context, name, force=force, on_output=on_output, on_event=on_event)

    destroyed = _run(action)
    console.print(f"ephemeral stack {name} {'destroyed and removed' if destroyed else 'was already gone'}")


def _moment(now: str | None) -> datetime | None:
    try:
        return parse_rfc3339(now) if now else None
    except ValueError as exc:
        raise typer.BadParameter(
            f"--now must be an RFC 3339 time such as 2026-01-31T12:00:00Z ({exc})."
        ) from exc


NowOpt = Annotated[
    str | None, typer.Option("--now", help="Pretend it is this RFC 3339 time (default: the clock).")
]


@ephemeral_app.command("list")
def ephemeral_list(ctx: typer.Context, now: NowOpt = None) -> None:
    """List the ephemeral stacks with their owner and expiry."""
    context: Context = ctx.obj
    moment = _moment(now)
    rows = _run(lambda: ephemeral_mod.list_stacks(context, now=moment))
    if not rows:
        typer.echo("no ephemeral stacks")
    for row in rows:
        state = {True: "EXPIRED", False: "active", None: "?"}[row.expired]
        typer.echo(
            f"{row.name}\t{state}\texpires {row.expires_at or '-'}\towner {row.owner or '-'}"
            + (f"\t{row.note}" if row.note else "")
        )


@ephemeral_app.command("reap")
def ephemeral_reap(
    ctx: typer.Context,
    now: NowOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be destroyed; change nothing.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Destroy every expired ephemeral stack (safe to run repeatedly and concurrently)."""
    context: Context = ctx.obj
    moment = _moment(now)

    def action() -> ephemeral_mod.ReapReport:
        with _progress("reap", quiet) as (on_output, on_event):
            return ephemeral_mod.reap(
                context, now=moment, dry_run=dry_run, on_output=on_output, on_event=on_event
            )

    report = _run(action)
    for name in report.would_destroy:
        typer.echo(f"would destroy {name} (expired)")
    for name in report.destroyed:
        typer.echo(f"destroyed {name}")
    for name in report.kept:
        typer.echo(f"kept {name} (not expired)")
    for name, reason in report.skipped.items():
        typer.echo(f"skipped {name}: {reason}")
    for name, reason in report.failed.items():
        typer.echo(f"FAILED {name}: {reason}")
    if report.failed:
        raise typer.Exit(1)


@app.command()
def status(ctx: typer.Context, stack: StackOpt) -> None:
    """URL, image digest, promotion record and the live /readyz of a deployed stack."""
    context: Context = ctx.obj
    info = _run(lambda: reach.read_info(context, stack))
    typer.echo(f"stack:     {stack}")
    typer.echo(f"url:       {info.url or '- (not deployed)'}")
    typer.echo(f"image:     {info.image or '-'}")
    promotion = info.promotion
    typer.echo(
        "promotion: "
        + (
            f"from {promotion.get('from')} by {promotion.get('by')} at {promotion.get('at')}"
            if promotion
            else "- (built from source, not promoted)"
        )
    )
    rolled = (promotion or {}).get("rollback")
    if isinstance(rolled, dict):
        typer.echo(
            f"rollback:  to update {rolled.get('toUpdate')} by {rolled.get('by')} at {rolled.get('at')} "
            f"(replaced {rolled.get('replaced')})"
        )
    if info.ephemeral:
        typer.echo(
            f"ephemeral: owner {info.ephemeral.get('owner')}, expires {info.ephemeral.get('expiresAt')}"
        )
    if info.url:
        with reach.client_for(info) as client:
            readiness = reach.check_ready(client)
        note = " [self-signed certificate, not verified]" if info.unverified_https else ""
        if info.staging_https:
            note = " [verified against Let's Encrypt's staging roots]"
        if not readiness.reachable:
            note += reach.loopback_note(info.url)
        typer.echo(f"readyz:    {readiness.describe()}{note}")
    if info.grafana:
        typer.echo(f"grafana:   {info.grafana.get('portForward')} -> {info.grafana.get('url')} (user admin)")
        typer.echo(f"           password: pulumi stack output grafanaAdminPassword --show-secrets -s {stack}")
    if info.embedding:
        wanted = reindex_mod.wanted_of(info.embedding)
        models = info.embedding.get("imageModels")
        typer.echo(
            f"index:     {reindex_mod.describe_config(wanted)}"
            + (f"; the image holds {', '.join(models)}" if isinstance(models, list) else "")
            + f" (live: ragops reindex status -s {stack})"
        )
    typer.echo(f"api keys:  pulumi stack output apiKeys --show-secrets -s {stack}")


@app.command()
def smoke(
    ctx: typer.Context,
    stack: StackOpt,
    wait: Annotated[
        float, typer.Option("--wait", min=0, help="Seconds to wait for /readyz (rollout, certificate).")
    ] = 300.0,
) -> None:
    """After an up: /readyz through the public URL, then one ingest, a search, an answer and the deletion."""
    context: Context = ctx.obj

    def action() -> reach.SmokeReport:
        info = reach.read_info(context, stack)
        if info.unverified_https:
            console.print(f"note: {stack} uses a self-signed certificate; TLS is not verified")
        return reach.smoke(info, wait_seconds=wait)

    report = _run(action)
    for step in report.steps:
        typer.echo(step)
    console.print(f"smoke check of {stack} passed ({report.url})", highlight=False)


# --- reindex ---------------------------------------------------------------------------------------------------

ReindexStackOpt = Annotated[
    str | None,
    typer.Option("--stack", "-s", help="Stack whose serviceUrl and adminApiKey outputs to use."),
]
UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="Service base URL instead of a stack (e.g. http://127.0.0.1:8000)."),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar="ADMIN_API_KEY",
        show_envvar=True,
        help="Admin key (default: the stack's adminApiKey).",
    ),
]
TimeoutOpt = Annotated[
    float,
    typer.Option("--timeout", min=0, help="Seconds to follow the re-index before giving up (it goes on)."),
]
IntervalOpt = Annotated[float, typer.Option("--interval", min=0.01, help="Seconds between status polls.")]


def _endpoint(
    ctx: typer.Context, stack: str | None, url: str | None, key: str | None
) -> reindex_mod.Endpoint:
    if (stack is None) == (url is None):
        raise UsageError("Give exactly one of --stack (use its outputs) and --url (a service base URL).")
    if stack is not None:
        return reindex_mod.endpoint_for_stack(ctx.obj, stack, key)
    return reindex_mod.Endpoint(url=str(url), key=key, label=str(url))


@contextmanager
def _reindex_progress(title: str) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A progress bar of documents re-embedded, fed with each re-index status."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("documents"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(title, total=None)

        def on_status(status: dict[str, Any]) -> None:
            progress.update(
                task,
                description=f"{title}: {status.get('state')}",
                completed=status.get("documents_done") or 0,
                total=status.get("documents_total") or None,
            )

        yield on_status


def follow_with_progress(
    client: Any,
    wanted: dict[str, Any],
    *,
    timeout: float,
    interval: float,
    title: str,
    from_collection: str | None = None,
    since: str | None = None,
) -> dict[str, Any]:
    """`reindex_mod.follow` with a progress bar of documents re-embedded."""
    with _reindex_progress(title) as on_status:
        return reindex_mod.follow(
            client,
            wanted,
            on_status=on_status,
            timeout_seconds=timeout,
            interval_seconds=interval,
            from_collection=from_collection,
            since=since,
        )


@reindex_app.command("start")
def reindex_start(
    ctx: typer.Context,
    stack: ReindexStackOpt = None,
    url: UrlOpt = None,
    key: KeyOpt = None,
    model: Annotated[
        str | None, typer.Option("--model", help="fastembed model (the image must hold it).")
    ] = None,
    chunk_size: Annotated[int | None, typer.Option("--chunk-size", min=16, help="Tokens per chunk.")] = None,
    chunk_overlap: Annotated[
        int | None, typer.Option("--chunk-overlap", min=0, help="Tokens shared by neighbouring chunks.")
    ] = None,
    allow_missing: Annotated[
        bool,
        typer.Option(
            "--allow-missing", help="Switch even if some documents have no kept text (they drop out)."
        ),
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Show progress until it has switched (or failed).")
    ] = True,
    timeout: TimeoutOpt = 3600.0,
    interval: IntervalOpt = 2.0,
) -> None:
    """Build the index for a new model and/or chunking while search serves the current one, then switch.

    Without --model/--chunk-size/--chunk-overlap it rebuilds the current settings: after an upgrade whose
    chunker changed (the service refuses when nothing would change), or to resume an interrupted build.
    """

    def action() -> dict[str, Any]:
        endpoint = _endpoint(ctx, stack, url, key)
        with endpoint.client() as client:
            before = reindex_mod.get_status(client).get("serving") or {}
            status = reindex_mod.start(
                client,
                model=model,
                chunk_size=chunk_size,
                chunk_overlap=chunk_overlap,
                allow_missing=allow_missing,
            )
            if not wait:
                return status
            wanted = reindex_mod.index_config(status.get("target")) or {}
            return follow_with_progress(
                client,
                wanted,
                timeout=timeout,
                interval=interval,
                title=f"re-index {endpoint.label}",
                from_collection=before.get("collection"),
                since=status.get("started_at"),
            )

    status = _run(action)
    typer.echo(reindex_mod.summary(status))


@reindex_app.command("status")
def reindex_status(
    ctx: typer.Context,
    stack: ReindexStackOpt = None,
    url: UrlOpt = None,
    key: KeyOpt = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow a running re-index with a progress bar until it ends.")
    ] = False,
    timeout: TimeoutOpt = 3600.0,
    interval: IntervalOpt = 2.0,
) -> None:
    """What search serves, the rollback target, and a running re-index's progress (exit 1 if it failed)."""

    def action() -> dict[str, Any]:
        endpoint = _endpoint(ctx, stack, url, key)
        with endpoint.client() as client:
            status = reindex_mod.get_status(client)
            target = reindex_mod.index_config(status.get("target"))
            if wait and status.get("state") in reindex_mod.RUNNING and target is not None:
                status = follow_with_progress(
                    client,
                    target,
                    timeout=timeout,
                    interval=interval,
                    title=f"re-index {endpoint.label}",
                    since=status.get("started_at"),
                )
            return status

    status = _run(action)
    typer.echo(reindex_mod.summary(status))
    if status.get("state") in ("failed", "interrupted"):
        raise typer.Exit(1)


@reindex_app.command("rollback")
def reindex_rollback(
    ctx: typer.Context, stack: ReindexStackOpt = None, url: UrlOpt = None, key: KeyOpt = None
) -> None:
    """Serve from the previous index again (the standby kept receiving every write)."""

    def action() -> dict[str, Any]:
        endpoint = _endpoint(ctx, stack, url, key)
        with endpoint.client() as client:
            return reindex_mod.rollback(client)

    status = _run(action)
    typer.echo(reindex_mod.summary(status))


@app.command()
def reconcile(
    ctx: typer.Context,
    stack: StackOpt,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would change; change nothing.")
    ] = False,
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="One tenant only (default: every tenant).")
    ] = None,
    namespace: Annotated[
        str | None, typer.Option("--namespace", help="Default: the namespace of the stack's qdrantEndpoint.")
    ] = None,
    deployment: Annotated[
        str, typer.Option("--deployment", help="Whose pod runs it (rag for a stack without workers).")
    ] = restore_mod.DEFAULT_DEPLOYMENT,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=1, help="Seconds to wait for kubectl before killing it (exit 3)."),
    ] = restore_mod.DEFAULT_TIMEOUT,
) -> None:
    """After a Qdrant or registry restore: remove orphan points, re-index documents whose points are missing."""
    context: Context = ctx.obj

    def action() -> int:
        try:
            return restore_mod.reconcile(
                context,
                stack,
                dry_run=dry_run,
                tenant=tenant,
                namespace=namespace,
                deployment=deployment,
                timeout=timeout,
                on_output=lambda line: typer.echo(line),
            )
        except restore_mod.ReconcileNotRun as exc:
            # Not 1 ("documents left"): a retry or a look at the pod, not a re-index, is what it needs.
            console.print(f"[red]reconciliation not run:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(restore_mod.RECONCILE_NOT_RUN) from exc

    raise typer.Exit(_run(action))


@app.command("qdrant-drain")
def qdrant_drain(
    url: Annotated[
        str,
        typer.Option(
            "--url",
            help="One Qdrant node's HTTP API, e.g. after `kubectl port-forward pod/qdrant-0 16330:6333`.",
        ),
    ],
    keep: Annotated[
        int, typer.Option("--keep", help="The node count you scale down to: ordinals >= KEEP leave.")
    ],
    api_key_env: Annotated[
        str, typer.Option("--api-key-env", help="Environment variable holding the Qdrant API key.")
    ] = "QDRANT_API_KEY",
) -> None:
    """Before lowering rag:qdrant.replicas: move every shard off the leaving nodes and remove their peers."""
    key = os.environ.get(api_key_env, "")

    def action() -> qdrant_drain_mod.DrainReport:
        if not key:
            raise UsageError(
                f"${api_key_env} is empty: export the Qdrant API key (docs/runbooks.md#scale-qdrant-down)."
            )
        return qdrant_drain_mod.drain(url, key, keep)

    report = _run(action)
    for collection, shard, source, target in report.moved:
        typer.echo(f"moved {collection} shard {shard}: peer {source} -> {target}")
    for collection, shard, peer in report.dropped:
        typer.echo(f"dropped {collection} shard {shard} replica on peer {peer}")
    typer.echo(f"removed peers: {', '.join(map(str, report.removed_peers)) or 'none'}")
    typer.echo(f"next: set rag:qdrant.replicas and rag:qdrant.scaleDownTo to {keep}, then `ragops up`")


def main() -> None:
    """Console-script entry point (``ragops``)."""
    app()


if __name__ == "__main__":
    main()
