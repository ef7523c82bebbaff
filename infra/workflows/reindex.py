"""``ragops reindex``: start, follow and roll back a deployed service's blue/green re-index.

The service does the work (``service.app.jobs.reindex``: build the new model's or chunking's collection from the
kept texts while search serves the current one, switch with one atomic pointer/alias change, keep the old one
as standby for a rollback); this module drives its admin API, ``/v1/admin/reindex``, with the stack's admin key:

* where: a stack's ``serviceUrl`` output (its ``tlsIssuer`` decides whether TLS is verified, as for ``smoke``) or
  an explicit URL;
* the key: the stack's secret ``adminApiKey`` output, or ``--key`` / ``$ADMIN_API_KEY``;
* :func:`follow` polls the status until the re-index has switched or failed, reporting each status to a
  callback (the CLI's progress bar).

There is no separate "switch" call: a re-index switches by itself once its build and catch-up are complete
(the only moment it is safe), and ``rollback`` switches back.

Several API replicas: each keeps its own job status, so a poll through a load balancer may reach a replica that
is not running the build. What every replica agrees on is the persisted index pointer (``serving`` in the
status), so completion is judged from it: the re-index is done when the pointer names the wanted config and
the answering replica is not still running (a replica in ``switching`` has moved the pointer but is replaying
its last catch-up), and failed only when a replica reports a failure while the pointer does not.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from infra.workflows.reach import StackInfo, read_info
from infra.workflows.stacks import PROJECT, Context, WorkflowError, _as_object

ROUTE = "/v1/admin/reindex"
RUNNING = frozenset({"waiting", "building", "catching_up", "switching"})  # waiting: another replica builds
INDEX_FIELDS = ("model", "chunk_size", "chunk_overlap")


class ReindexFailure(WorkflowError):
    """The service refused a re-index command, or the re-index failed; the message says why."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class Endpoint:
    """Where the service's admin API is and how to authenticate to it."""

    url: str
    key: str | None
    verify: ssl.SSLContext | bool = True
    label: str = ""

    def client(self, transport: httpx.BaseTransport | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        return httpx.Client(
            base_url=self.url.rstrip("/"),
            headers=headers,
            verify=self.verify,
            timeout=httpx.Timeout(60.0, connect=10.0),
            transport=transport,
        )


def endpoint_for_stack(ctx: Context, stack: str, key: str | None = None) -> Endpoint:
    """The stack's ``serviceUrl`` and admin key (``key`` overrides the ``adminApiKey`` output)."""
    info = read_info(ctx, stack)
    return endpoint_of(info, key)


def endpoint_of(info: StackInfo, key: str | None = None) -> Endpoint:
    if not info.url:
        raise WorkflowError(
            f"Stack {info.stack!r} has no serviceUrl output: has it been deployed (`ragops up`)?"
        )
    key = key or info.admin_key
    if not key:
        raise WorkflowError(
            f"Stack {info.stack!r} exports no adminApiKey output (deployed before the admin key was part of "
            "the stack?): run `ragops up` first, or pass --key."
        )
    return Endpoint(url=info.url, key=key, verify=info.verify_tls, label=f"stack {info.stack}")


def _check(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code < 400:
        body = response.json()
        if not isinstance(body, dict):
            raise ReindexFailure(f"{what}: unexpected answer {response.text[:200]!r}")
        return body
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:300] or response.reason_phrase
    hint = {
        401: " (the admin key is missing or wrong: the stack's adminApiKey output, or --key)",
        403: " (the service has no ADMIN_API_KEY configured)",
        404: " (this service has no re-index API: is it older than the re-index?)",
        409: " (see `ragops reindex status`)",
    }.get(response.status_code, "")
    raise ReindexFailure(f"{what}: HTTP {response.status_code}: {message}{hint}", response.status_code)


def _call(action: Callable[[], httpx.Response], what: str, url: str) -> dict[str, Any]:
    try:
        return _check(action(), what)
    except httpx.HTTPError as exc:
        raise ReindexFailure(f"{what}: cannot reach {url}: {type(exc).__name__}: {exc}".rstrip(": ")) from exc


def get_status(client: httpx.Client) -> dict[str, Any]:
    """``GET /v1/admin/reindex``."""
    return _call(lambda: client.get(ROUTE), f"GET {ROUTE}", str(client.base_url))


def start(
    client: httpx.Client,
    *,
    model: str | None = None,
    chunk_size: int | None = None,
    chunk_overlap: int | None = None,
    allow_missing: bool = False,
) -> dict[str, Any]:
    """``POST /v1/admin/reindex``: what is not given keeps the current index's value."""
    body: dict[str, Any] = {"allow_missing": allow_missing}
    for name, value in (("model", model), ("chunk_size", chunk_size), ("chunk_overlap", chunk_overlap)):
        if value is not None:
            body[name] = value
    return _call(lambda: client.post(ROUTE, json=body), f"POST {ROUTE}", str(client.base_url))


def rollback(client: httpx.Client) -> dict[str, Any]:
    """``POST /v1/admin/reindex/rollback``."""
    return _call(lambda: client.post(f"{ROUTE}/rollback"), f"POST {ROUTE}/rollback", str(client.base_url))


def index_config(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The model/chunking part of a status's ``current``/``target``/``serving`` (None when absent)."""
    if not value:
        return None
    return {name: value.get(name) for name in INDEX_FIELDS}


def serving_config(status: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the persisted pointer serves (every replica follows it); this replica's ``current`` if absent."""
    return index_config(status.get("serving")) or index_config(status.get("current"))


def follow(
    client: httpx.Client,
    wanted: Mapping[str, Any],
    *,
    on_status: Callable[[dict[str, Any]], Any] | None = None,
    timeout_seconds: float = 3600.0,
    interval_seconds: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    from_collection: str | None = None,
    since: str | None = None,
) -> dict[str, Any]:
    """Poll until search serves ``wanted`` (model, chunk_size, chunk_overlap); the last status.

    ``since``: the ``started_at`` of the build being followed (the start's own answer), when known: a failure a
    replica still shows from an EARLIER build towards the same settings (started before it) is not this one's.

    ``from_collection``: the collection the pointer named when the re-index started; the pointer must have
    left it (a re-index of the same config, e.g. to add vectors, is only done once it moved).
    ReindexFailure when a replica reports the build towards ``wanted`` failed while the pointer does not name
    it yet, or after ``timeout_seconds`` (the re-index, if any, goes on in the service).
    """
    deadline = clock() + timeout_seconds
    wanted = index_config(wanted) or {}
    while True:
        status = get_status(client)
        if on_status is not None:
            on_status(status)
        state = status.get("state")
        serving = status.get("serving") or status.get("current") or {}
        moved = from_collection is None or serving.get("collection") != from_collection
        # Done once the pointer names it and this replica is not still in the switch's final catch-up.
        if serving_config(status) == wanted and moved and state not in RUNNING:
            return status
        ours = index_config(status.get("target")) == wanted and _not_before(status.get("started_at"), since)
        if state == "failed" and ours:
            raise ReindexFailure(f"the re-index failed: {status.get('error')}")
        if state == "interrupted" and ours:
            # Its builder died and no replica resumes it (they do, up to a limit): an admin decides.
            raise ReindexFailure(
                f"the re-index was interrupted: {status.get('error')} "
                "(`ragops reindex start` with the same settings resumes it)"
            )
        # Any other answer (idle, or an earlier re-index's end state) may come from a replica that is not the
        # one building: poll on; the pointer or the building replica's failure decides.
        if clock() >= deadline:
            raise ReindexFailure(
                f"the re-index did not switch to {describe_config(wanted)} within {timeout_seconds:.0f}s "
                f"(last state {state}, {status.get('documents_done')}/{status.get('documents_total')} documents); "
                "it keeps running in the service: `ragops reindex status --wait`"
            )
        sleep(interval_seconds)


def _not_before(started_at: Any, since: str | None) -> bool:
    """Whether a status's ``started_at`` is not before ``since`` (True when either is unknown)."""
    try:
        started = datetime.fromisoformat(started_at) if isinstance(started_at, str) else None
        floor = datetime.fromisoformat(since) if isinstance(since, str) else None
    except ValueError:
        return True
    return started is None or floor is None or started >= floor


def describe_config(config: Mapping[str, Any] | None) -> str:
    if not config:
        return "-"
    return f"{config.get('model')} (chunk {config.get('chunk_size')}/{config.get('chunk_overlap')})"


def summary(status: Mapping[str, Any]) -> str:
    """One line: state, what search serves, progress, and the error if any."""
    current = status.get("current") or {}
    line = (
        f"{status.get('state')}: serving {current.get('collection')} {describe_config(index_config(current))}; "
        f"documents {status.get('documents_done')}/{status.get('documents_total')}, "
        f"replayed {status.get('documents_replayed')}"
    )
    serving = status.get("serving")
    if serving and serving.get("collection") != current.get("collection"):
        line += (
            f"; the index pointer names {serving.get('collection')} (this replica follows at its next write)"
        )
    if status.get("standby"):
        line += f"; rollback target {status['standby'].get('collection')}"
    if status.get("documents_without_text"):
        listed = ", ".join(status.get("without_text") or [])
        line += f"; {status['documents_without_text']} without kept text (e.g. {listed})"
    if status.get("resumed_from") and status.get("state") != "interrupted":
        line += f"; resumes the build {status['resumed_from']} left when it died (attempt {status.get('attempt')})"
    if status.get("error"):
        line += f"; error: {status['error']}"
    return line + choice(status)


def choice(status: Mapping[str, Any]) -> str:
    """Who chose the served index, and whether start-ups keep it (empty for a service that does not say)."""
    chosen_by = status.get("chosen_by")
    if not chosen_by:
        return ""
    if chosen_by == "config":
        text = "; chosen by the deployed settings"
    else:
        text = (
            f"; chosen by an operator ({chosen_by}) against the deployed settings "
            f"{describe_config(status.get('pinned_settings'))}: pod starts keep it until the stack's settings change"
        )
    settings = status.get("settings")
    if settings and index_config(settings) != index_config(status.get("serving") or status.get("current")):
        text += f"; this replica's settings: {describe_config(settings)}"
    if status.get("startup"):
        text += f"; at start-up: {status['startup']}"
    return text


# --- a deployment that changes the index config (ragops up / promote) -----------------------------------------
EMBEDDING_KEY = f"{PROJECT}:embedding"


def wanted_of(embedding: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The stack's ``embedding`` output as the service's index config (None when the stack exports none)."""
    if not embedding or not embedding.get("model"):
        return None
    return {
        "model": embedding.get("model"),
        "chunk_size": embedding.get("chunkSize"),
        "chunk_overlap": embedding.get("chunkOverlap"),
    }


def index_change(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(old, new) index config when an update changed the model or the chunking; None otherwise (also for a
    first deployment, or a stack deployed before it exported ``embedding``: there is no index to move)."""
    old, new = wanted_of(before), wanted_of(after)
    if old is None or new is None or old == new:
        return None
    return old, new


def check_image_keeps(stack: str, before: Mapping[str, Any] | None, image_models: Any, where: str) -> None:
    """Refuse an update whose image cannot serve the deployed index while the re-index to the new model runs.

    Until the switch, search embeds queries with the deployed index's model, and a rollback needs it after; a
    pod whose image lacks it cannot start. ``image_models``: the models the image will hold (None: unknown).
    """
    old = wanted_of(before)
    if old is None or not isinstance(image_models, list) or old["model"] in image_models:
        return
    raise WorkflowError(
        f"{where}: stack {stack!r} serves an index built with {old['model']}, but the image it would run holds only "
        f"{', '.join(image_models)}. Search needs {old['model']} until the re-index to the new model has switched "
        f"(and for a rollback): add it to rag:embedding.extraModels and deploy (or promote) a build with both."
    )


def planned_image_models(
    config: Mapping[str, Any], project_embedding: Mapping[str, Any] | None
) -> list[str] | None:
    """The models the stack's next ``up`` will run with, from its config (``pulumi config --json`` values) and
    Pulumi.yaml's declared ``embedding`` default: a promoted image's recorded models, else what a build bakes."""

    def raw(key: str) -> Any:
        entry = config.get(f"{PROJECT}:{key}")
        return None if entry is None else getattr(entry, "value", entry)

    if raw("image"):
        models = (_as_object(raw("promotion")) or {}).get("models")
        return list(models) if isinstance(models, list) else None
    embedding = {**(project_embedding or {}), **(_as_object(raw("embedding")) or {})}
    if not embedding.get("model"):
        return None
    return [embedding["model"], *(embedding.get("extraModels") or [])]


def converge(
    client: httpx.Client,
    wanted: Mapping[str, Any],
    *,
    on_status: Callable[[dict[str, Any]], Any] | None = None,
    timeout_seconds: float = 3600.0,
    interval_seconds: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """After a rollout with a new index config: follow the re-index the new pods started at start-up, or start
    it when none runs (REINDEX_ON_CONFIG_CHANGE off, or nothing picked it up); the status once search serves it.
    """
    wanted = index_config(wanted) or {}
    status = get_status(client)
    state = status.get("state")
    if serving_config(status) == wanted and state not in RUNNING:
        return status
    if state == "failed" and index_config(status.get("target")) == wanted:
        raise ReindexFailure(f"the re-index the new pods started failed: {status.get('error')}")
    since = None  # the started_at of the build this call started (a replica's earlier failure is not it)
    if state not in RUNNING:  # interrupted too: starting it again resumes the dead build's collection
        try:
            since = start(client, **wanted).get("started_at")
        except ReindexFailure as exc:
            # The status was read from one replica at one moment: the re-index may have started (409: one is
            # running) or even switched (422: the index already has these settings) since. Read it again: a
            # refusal is a failure only while the pointer does not name ``wanted`` and nothing runs.
            if exc.status_code not in (409, 422):
                raise
            status = get_status(client)
            if exc.status_code == 422 and serving_config(status) != wanted:
                raise
    # The pointer must leave the collection it named, unless it already names ``wanted``: then this is the
    # switch's final catch-up (state "switching") and the collection it names is the new one, which it keeps.
    moved_from = None if serving_config(status) == wanted else (status.get("serving") or {}).get("collection")
    return follow(
        client,
        wanted,
        on_status=on_status,
        timeout_seconds=timeout_seconds,
        interval_seconds=interval_seconds,
        sleep=sleep,
        clock=clock,
        from_collection=moved_from,
        since=since,
    )
