"""Which CAs `ragops` trusts for a stack's URL, proven with real TLS handshakes on loopback.

Staging's certificates come from Let's Encrypt's staging CA, whose roots are in no public trust store: checked
against the public CAs every `ragops status/smoke/reindex` of staging failed, and `promote` never reached prod.
A throwaway PKI (a root standing in for the staging root, an intermediate, a server certificate for 127.0.0.1)
serves /readyz over HTTPS; the tests swap the staging bundle for that root and show that `letsencrypt-staging`
is verified against the bundle (and only it), `letsencrypt` against the public CAs, and that a certificate from
an issuer the bundle does not hold fails verification.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.workflows import reach
from infra.workflows.cli import app
from infra.workflows.reindex import endpoint_of
from infra.workflows.stacks import Context
from tests.workflows.fake_pulumi import DIGEST, FakeBackend

runner = CliRunner()

#: SHA-256 of the published staging roots (letsencrypt.org/docs/staging-environment; cross-checked against two
#: independent public listings when the bundle was made).
STAGING_ROOTS = {
    "(STAGING) Pretend Pear X1": "e70570a989f8565aabdf7cae27abd1621872d6a3f811e3fef27e3dba02912198",
    "(STAGING) Bogus Broccoli X2": "9b2a339fe6a3e85585c4cd75536cb8c1cf7cd603b9a64bec2521858ae48da85d",
    "(STAGING) Yearning Yucca Root YE": "b59bfc0ba52daf849853b7324a91e82f031db3397f35644157352cde6384b56c",
    "(STAGING) Yonder Yam Root YR": "ef115fb59e040ff39d15fd8f3ef54063c704321d83cb081213272f77d3091672",
}


@dataclass(frozen=True)
class Pki:
    root: Path  # stands in for the staging root
    other_root: Path  # a CA nothing here issued from
    chain: Path  # server certificate + intermediate, as cert-manager's Secret holds them
    key: Path


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(cwd: Path, name: str) -> None:
    _openssl(
        cwd,
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=ragops test {name}"),
        *("-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"),
    )


def _issue(cwd: Path, name: str, issuer: str, extensions: str) -> None:
    _openssl(
        cwd,
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=ragops test {name}"),
    )
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl(
        cwd,
        *("x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.pem", "-CAkey", f"{issuer}.key"),
        *("-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext"),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "root")
    _ca(d, "other-root")
    _issue(
        d,
        "intermediate",
        "root",
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign\n",
    )
    _issue(
        d,
        "server",
        "intermediate",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    chain = d / "chain.pem"
    chain.write_text((d / "server.pem").read_text() + (d / "intermediate.pem").read_text())
    return Pki(root=d / "root.pem", other_root=d / "other-root.pem", chain=chain, key=d / "server.key")


class _Readyz(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"status": "ok", "checks": {"qdrant": "ok"}}).encode()
        self.send_response(200 if self.path == "/readyz" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def https_url(pki: Pki) -> Iterator[str]:
    """A real HTTPS server on loopback serving the test chain; a handshake the client refuses just ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Readyz)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.chain, pki.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _status(ctx: Context, backend: FakeBackend, url: str, issuer: str | None) -> str:
    backend.add_stack(
        "staging",
        outputs={"serviceUrl": url, "imageDigest": DIGEST, **({"tlsIssuer": issuer} if issuer else {})},
    )
    result = runner.invoke(app, ["status", "-s", "staging"], obj=ctx)
    assert result.exit_code == 0, result.output
    return next(line for line in result.output.splitlines() if line.startswith("readyz:"))


def test_the_bundle_holds_exactly_the_published_staging_roots() -> None:
    text = reach.LETSENCRYPT_STAGING_ROOTS.read_text()
    assert "PRIVATE KEY" not in text
    pems = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
    fingerprints = {hashlib.sha256(ssl.PEM_cert_to_DER_cert(p)).hexdigest() for p in pems}
    assert fingerprints == set(STAGING_ROOTS.values())
    context = reach.tls_verify("letsencrypt-staging")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    names = {dict(rdn[0] for rdn in ca["subject"])["commonName"] for ca in context.get_ca_certs()}
    assert names == set(STAGING_ROOTS)  # the staging roots and nothing else: no public CA


def test_staging_is_verified_against_the_staging_roots(
    ctx: Context, backend: FakeBackend, https_url: str, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reach, "LETSENCRYPT_STAGING_ROOTS", pki.root)
    line = _status(ctx, backend, https_url, "letsencrypt-staging")
    assert line == "readyz:    ready (HTTP 200; qdrant ok) [verified against Let's Encrypt's staging roots]"
    # The re-index commands reach the admin API the same way.
    info = reach.read_info(ctx, "staging")
    with endpoint_of(info, key="admin").client() as client:
        assert client.get("/readyz").status_code == 200


def test_staging_with_the_real_bundle_refuses_a_certificate_it_did_not_issue(
    ctx: Context, backend: FakeBackend, https_url: str
) -> None:
    """Not verification switched off: the real staging roots did not issue the test chain."""
    line = _status(ctx, backend, https_url, "letsencrypt-staging")
    assert line.startswith("readyz:    unreachable (ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED]"), line


def test_an_issuer_the_staging_bundle_does_not_hold_fails_verification(
    ctx: Context, backend: FakeBackend, https_url: str, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reach, "LETSENCRYPT_STAGING_ROOTS", pki.other_root)
    line = _status(ctx, backend, https_url, "letsencrypt-staging")
    assert "CERTIFICATE_VERIFY_FAILED" in line, line
    assert "unable to get local issuer certificate" in line, line


@pytest.mark.parametrize("issuer", ["letsencrypt", None])
def test_prod_and_unknown_issuers_are_verified_against_the_public_cas_only(
    ctx: Context,
    backend: FakeBackend,
    https_url: str,
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
    issuer: str | None,
) -> None:
    """Even with the test root as the staging bundle, prod's issuer never trusts it."""
    monkeypatch.setattr(reach, "LETSENCRYPT_STAGING_ROOTS", pki.root)
    assert reach.tls_verify(issuer) is True  # httpx: certifi's public CAs
    line = _status(ctx, backend, https_url, issuer)
    assert "CERTIFICATE_VERIFY_FAILED" in line, line


def test_the_self_signed_issuer_is_used_without_verification(
    ctx: Context, backend: FakeBackend, https_url: str
) -> None:
    line = _status(ctx, backend, https_url, "selfSigned")
    assert line == "readyz:    ready (HTTP 200; qdrant ok) [self-signed certificate, not verified]"


def test_an_existing_cluster_issuer_is_reported_and_verified_against_the_public_cas() -> None:
    """With `tls.clusterIssuer`, `tls.issuer` is unused: the output used to report it anyway (staging's
    letsencrypt-staging), so ragops checked a corporate or other ACME issuer's certificate against the wrong CA."""
    from infra.offline import run_stack

    run = run_stack("staging", config_overrides={"tls": {"clusterIssuer": "corp-ca"}})
    assert run.outputs["tlsIssuer"] == "clusterIssuer:corp-ca"
    assert reach.tls_verify(run.outputs["tlsIssuer"]) is True
    assert run_stack("staging").outputs["tlsIssuer"] == "letsencrypt-staging"
