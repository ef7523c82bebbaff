"""``ragops status`` and ``ragops smoke``: what a deployed stack is, and whether it answers through its public URL.

Both read the stack's outputs from the backend (``pulumi stack output --json --show-secrets``): ``serviceUrl``,
``imageDigest``, ``promotion``, ``ephemeral``, the secret ``apiKeys`` and ``tlsIssuer`` (``ragops reindex`` also
the secret ``adminApiKey`` and ``embedding``). A stack whose certificate
comes from the self-signed issuer (dev, PR stacks) cannot be verified against public CAs: its HTTPS is used without
verification, and the output says so. Every other issuer is verified: ``letsencrypt-staging`` (staging) against
Let's Encrypt's staging roots, bundled in ``letsencrypt-staging-roots.pem`` (they are in no public trust store, so
verifying against the public CAs would fail every staging check, and turning verification off would accept any
certificate), everything else against the public CAs (certifi).

``smoke`` is the check the workflows run after every ``up``: ``/readyz`` through the public URL (retried while the
rollout and the certificate settle, up to ``wait`` seconds), then one document ingested with the stack's API key, a
search that must return it, a question it answers (``/v1/answer``; the extractive answerer must cite it), and the
document deleted again, so repeated smoke runs leave nothing behind.
"""

from __future__ import annotations

import json
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from infra.workflows.ephemeral import is_loopback_name
from infra.workflows.stacks import Context, WorkflowError, _as_object

READYZ_TIMEOUT_SECONDS = 5.0
#: Let's Encrypt's staging roots (the file says where they come from and pins their fingerprints).
LETSENCRYPT_STAGING_ROOTS = Path(__file__).with_name("letsencrypt-staging-roots.pem")
STAGING_ISSUER = "letsencrypt-staging"


def tls_verify(issuer: str | None) -> ssl.SSLContext | bool:
    """How to verify the HTTPS of a stack whose certificate comes from ``issuer`` (the ``tlsIssuer`` output).

    False for the self-signed issuer (nothing to verify against); an SSL context trusting only Let's Encrypt's
    staging roots for ``letsencrypt-staging``; True (httpx: the public CAs of certifi) for any other issuer.
    """
    if issuer == "selfSigned":
        return False
    if issuer == STAGING_ISSUER:
        return ssl.create_default_context(cafile=str(LETSENCRYPT_STAGING_ROOTS))
    return True


#: The smoke document and a question it answers. A question, not the document's own text: the extractive
#: answerer abstains on a query that only restates a passage ("None of the retrieved passages answers this
#: question directly"), which would pass an answer step that proves nothing.
SMOKE_DOCUMENT = "The ragops smoke check says the zebra crossing of Ragops Point is at the lighthouse."
SMOKE_QUERY = "Where is the zebra crossing of Ragops Point?"


@dataclass(frozen=True)
class StackInfo:
    """The outputs a user needs after ``up``."""

    stack: str
    url: str | None
    image: str | None
    promotion: dict[str, Any] | None
    ephemeral: dict[str, Any] | None
    tls_issuer: str | None
    api_keys: dict[str, str] = field(default_factory=dict, repr=False)
    grafana: dict[str, Any] | None = None
    admin_key: str | None = field(default=None, repr=False)
    embedding: dict[str, Any] | None = None
    """The index config the stack deploys: {model, chunkSize, chunkOverlap, imageModels}."""

    @property
    def verify_tls(self) -> ssl.SSLContext | bool:
        """How the URL's certificate is checked (httpx's ``verify``): see :func:`tls_verify`."""
        return tls_verify(self.tls_issuer)

    @property
    def unverified_https(self) -> bool:
        """An https URL whose certificate is not verified (the self-signed issuer)."""
        return bool(self.url and self.url.startswith("https://") and self.tls_issuer == "selfSigned")

    @property
    def staging_https(self) -> bool:
        """An https URL verified against Let's Encrypt's staging roots instead of the public CAs."""
        return bool(self.url and self.url.startswith("https://") and self.tls_issuer == STAGING_ISSUER)


@dataclass(frozen=True)
class Readiness:
    """The live answer of ``GET {url}/readyz``: an HTTP status and the body's checks, or why there was none."""

    reachable: bool
    status_code: int | None = None
    checks: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.status_code == 200

    def describe(self) -> str:
        if not self.reachable:
            return f"unreachable ({self.error})"
        checks = ", ".join(f"{k} {v}" for k, v in sorted(self.checks.items()))
        state = "ready" if self.ready else "NOT ready"
        return f"{state} (HTTP {self.status_code}{'; ' + checks if checks else ''})"


def read_info(ctx: Context, stack: str) -> StackInfo:
    """The stack's outputs (StackNotFoundError when the stack does not exist)."""
    outputs = {k: v.value for k, v in ctx.workspace().stack_outputs(stack).items()}
    raw_keys = outputs.get("apiKeys")
    keys: dict[str, str] = {}
    if isinstance(raw_keys, str) and raw_keys:
        try:
            parsed = json.loads(raw_keys)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            keys = {str(k): str(v) for k, v in parsed.items()}
    grafana = outputs.get("grafana")
    return StackInfo(
        stack=stack,
        url=outputs.get("serviceUrl") or None,
        image=outputs.get("imageDigest") or None,
        promotion=_as_object(outputs.get("promotion")),
        ephemeral=_as_object(outputs.get("ephemeral")),
        tls_issuer=outputs.get("tlsIssuer") or None,
        api_keys=keys,
        grafana=grafana if isinstance(grafana, dict) else _as_object(grafana),
        admin_key=outputs.get("adminApiKey") or None,
        embedding=_as_object(outputs.get("embedding")),
    )


def client_for(info: StackInfo, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """An HTTP client for the stack's URL, verifying its certificate as :func:`tls_verify` says."""
    if not info.url:
        raise WorkflowError(
            f"Stack {info.stack!r} has no serviceUrl output: has it been deployed (`ragops up`)?"
        )
    return httpx.Client(
        base_url=info.url.rstrip("/"),
        verify=info.verify_tls,
        timeout=httpx.Timeout(30.0, connect=READYZ_TIMEOUT_SECONDS),
        transport=transport,
    )


def loopback_note(url: str) -> str:
    """A note when the URL's host is a name that resolves to the local machine (reachable only there)."""
    host = (httpx.URL(url).host or "").lower()
    if host in ("127.0.0.1", "::1") or is_loopback_name(host):
        return (
            f" ({host} resolves to the machine running ragops: set rag:gateway.hostname to a DNS name that points "
            "at the cluster's gateway)"
        )
    return ""


def check_ready(client: httpx.Client) -> Readiness:
    """One ``GET /readyz``."""
    try:
        response = client.get("/readyz", timeout=READYZ_TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        return Readiness(reachable=False, error=f"{type(exc).__name__}: {exc}".rstrip(": "))
    checks: dict[str, str] = {}
    try:
        body = response.json()
        if isinstance(body, dict):
            raw = body.get("checks") or body.get("error", {}).get("details", {}).get("checks") or {}
            if isinstance(raw, dict):
                checks = {str(k): str(v) for k, v in raw.items()}
    except (ValueError, AttributeError):
        pass
    return Readiness(reachable=True, status_code=response.status_code, checks=checks)


@dataclass
class SmokeReport:
    """What the smoke check did, step by step."""

    url: str
    steps: list[str] = field(default_factory=list)


class SmokeFailure(WorkflowError):
    """The deployed stack does not serve: the message names the step and the server's answer."""


def _expect(response: httpx.Response, codes: tuple[int, ...], step: str) -> dict[str, Any]:
    if response.status_code not in codes:
        raise SmokeFailure(
            f"{step}: expected HTTP {'/'.join(map(str, codes))}, got {response.status_code}: {response.text[:300]}"
        )
    try:
        body = response.json()
    except ValueError:
        body = {}
    return body if isinstance(body, dict) else {"items": body}


def smoke(
    info: StackInfo,
    *,
    wait_seconds: float = 300.0,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> SmokeReport:
    """/readyz (retried until `wait_seconds`), one ingest, a search that finds it, an answer, and its deletion."""
    if not info.api_keys:
        raise SmokeFailure(
            f"Stack {info.stack!r} exports no apiKeys output: the smoke check needs an API key."
        )
    key = next(iter(info.api_keys))
    report = SmokeReport(url=str(info.url))
    with client_for(info, transport) as client:
        deadline = clock() + wait_seconds
        while True:
            readiness = check_ready(client)
            if readiness.ready:
                break
            if clock() >= deadline:
                raise SmokeFailure(
                    f"GET {info.url}/readyz: {readiness.describe()} after waiting {wait_seconds:.0f}s"
                    + loopback_note(str(info.url))
                )
            sleep(min(5.0, max(0.0, deadline - clock())))
        report.steps.append(f"GET /readyz: {readiness.describe()}")

        auth = {"Authorization": f"Bearer {key}"}
        document_id = f"ragops-smoke-{uuid.uuid4().hex[:12]}"
        body = _expect(
            client.put(
                f"/v1/documents/{document_id}",
                json={"text": SMOKE_DOCUMENT, "metadata": {"source": "ragops-smoke"}},
                headers=auth,
            ),
            (200, 201),
            f"PUT /v1/documents/{document_id}",
        )
        report.steps.append(
            f"PUT /v1/documents/{document_id}: {body.get('status')} ({body.get('chunks')} chunks)"
        )
        try:
            found = _expect(
                client.post(
                    "/v1/search",
                    json={"query": SMOKE_QUERY, "top_k": 5, "filter": {"source": "ragops-smoke"}},
                    headers=auth,
                ),
                (200,),
                "POST /v1/search",
            )
            hits = [r.get("document_id") for r in found.get("results", [])]
            if document_id not in hits:
                raise SmokeFailure(
                    f"POST /v1/search did not return the document just ingested ({document_id}): {hits}"
                )
            report.steps.append(f"POST /v1/search: found {document_id} among {len(hits)} result(s)")
            # The generation half too: the configured LLM (or the embedded extractive answerer) answers from it.
            answered = _expect(
                client.post(
                    "/v1/answer",
                    json={"query": SMOKE_QUERY, "top_k": 3, "filter": {"source": "ragops-smoke"}},
                    headers=auth,
                ),
                (200,),
                "POST /v1/answer",
            )
            if not str(answered.get("answer", "")).strip():
                raise SmokeFailure(f"POST /v1/answer returned no answer: {answered}")
            cited = [c.get("document_id") for c in answered.get("citations", [])]
            if answered.get("generator") == "extractive" and document_id not in cited:
                # The extractive answerer quotes the passage it answers from: no citation of the document just
                # found means it abstained or answered from something else.
                raise SmokeFailure(
                    f"POST /v1/answer did not answer from the document just ingested ({document_id}): "
                    f"{str(answered.get('answer'))[:200]!r}, citations {cited}"
                )
            report.steps.append(
                f"POST /v1/answer: {answered.get('model')} answered with {len(cited)} citation(s)"
            )
        finally:
            deleted = client.delete(f"/v1/documents/{document_id}", headers=auth)
        _expect(deleted, (200, 204), f"DELETE /v1/documents/{document_id}")
        report.steps.append(f"DELETE /v1/documents/{document_id}: HTTP {deleted.status_code}")
    return report
