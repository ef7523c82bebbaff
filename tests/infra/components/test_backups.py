"""Tests of the QdrantBackups component, including a real run of its backup script against a local HTTP
stand-in for the Qdrant snapshot API and a stand-in `aws` CLI that stores what it receives."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pulumi
import pytest

from infra.components import backups as b
from infra.components.qdrant import QdrantCluster, QdrantClusterArgs
from infra.components.specs import ComponentArgsError

from .conftest import Program, assert_all_parented, resolve, run_components, validate_manifests

PEERS = tuple(f"http://qdrant-{i}.qdrant-headless.rag.svc:6333" for i in range(3))
API_KEY = "backup-test-key"


def backup_args(**overrides: object) -> b.QdrantBackupsArgs:
    values: dict[str, object] = {
        "namespace": "rag",
        "cloud": "aws",
        "bucket_name": "rag-prod-qdrant-backups",
        "qdrant_peer_urls": PEERS,
        "qdrant_api_key_secret": "qdrant-api-key",
        "schedule": "15 2 * * *",
        "service_account_annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/backup"},
        "create_bucket": True,
        "protect": True,
    }
    values.update(overrides)
    return b.QdrantBackupsArgs(**values)  # type: ignore[arg-type]


def run_backups(args: b.QdrantBackupsArgs) -> Program:
    return run_components(lambda: b.QdrantBackups("qdrant-backup", args))


# ---------------------------------------------------------------------------------------------- the script
class FakeQdrant(BaseHTTPRequestHandler):
    """Just enough of Qdrant's REST API: list collections, create/download/delete snapshots, API key checked."""

    collections = ("documents_a", "documents_b")
    created: list[str] = []
    deleted: list[str] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _authorised(self) -> bool:
        if self.headers.get("api-key") != API_KEY:
            self.send_response(401)
            self.end_headers()
            return False
        return True

    def _json(self, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if not self._authorised():
            return
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts == ["collections"]:
            self._json({"result": {"collections": [{"name": c} for c in self.collections]}, "status": "ok"})
        elif len(parts) == 4 and parts[2] == "snapshots":
            data = f"SNAPSHOT {parts[1]} {parts[3]}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self.send_response(404)
            self.end_headers()

    def do_POST(self) -> None:
        if not self._authorised():
            return
        collection = self.path.strip("/").split("/")[1]
        name = f"{collection}-{len(self.created)}.snapshot"
        self.created.append(name)
        self._json({"result": {"name": name, "size": 10}, "status": "ok"})

    def do_DELETE(self) -> None:
        if not self._authorised():
            return
        self.deleted.append(self.path.split("?")[0].rsplit("/", 1)[-1])
        self._json({"result": True, "status": "ok"})


@pytest.fixture
def fake_qdrant() -> Iterator[str]:
    FakeQdrant.created = []
    FakeQdrant.deleted = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeQdrant)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


def run_script(tmp_path: Path, peers: str, api_key: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "backup.sh"
    script.write_text(b.BACKUP_SCRIPT, encoding="utf-8")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    store = tmp_path / "store"
    # A stand-in `aws` CLI: `aws s3 cp - s3://bucket/key` stores stdin under store/bucket/key.
    fake_aws = bin_dir / "aws"
    fake_aws.write_text(
        '#!/bin/bash\nset -e\n[ "$1 $2 $3" = "s3 cp -" ]\ndest="${4#s3://}"\n'
        f'mkdir -p "{store}/$(dirname "$dest")"\ncat > "{store}/$dest"\n',
        encoding="utf-8",
    )
    fake_aws.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "QDRANT_PEERS": peers,
        "QDRANT_API_KEY": api_key,
        "BUCKET": "bucket",
        "PREFIX": "qdrant/prod",
        "CLOUD": "aws",
    }
    return subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_script_snapshots_every_collection_on_every_node(tmp_path: Path, fake_qdrant: str) -> None:
    peers = f"{fake_qdrant} {fake_qdrant.replace('127.0.0.1', 'localhost')}"
    result = run_script(tmp_path, peers, API_KEY)
    assert result.returncode == 0, result.stderr
    stored = sorted(p.relative_to(tmp_path / "store") for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert len(stored) == 4  # 2 nodes x 2 collections
    assert len({p.parts[3] for p in stored}) == 1  # one UTC stamp per run
    assert {p.parts[4] for p in stored} == {"127", "localhost"}
    assert {p.parts[5] for p in stored} == {"documents_a", "documents_b"}
    assert all(p.parts[:3] == ("bucket", "qdrant", "prod") for p in stored)
    first = tmp_path / "store" / stored[0]
    assert first.read_text().startswith("SNAPSHOT documents_")
    assert sorted(FakeQdrant.deleted) == sorted(FakeQdrant.created)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["event"] == "backup_finished"
    assert summary["snapshots"] == 4


def test_script_fails_loudly_on_a_wrong_api_key(tmp_path: Path, fake_qdrant: str) -> None:
    result = run_script(tmp_path, fake_qdrant, "wrong-key")
    assert result.returncode != 0
    assert not (tmp_path / "store").exists()


# ---------------------------------------------------------------------------------------------- pure specs
def test_cronjob_spec() -> None:
    spec = b.cronjob_spec(backup_args(), "qdrant-backup", "qdrant-backup-script")
    assert spec["schedule"] == "15 2 * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "qdrant-backup"
    container = pod["containers"][0]
    assert container["image"] == b.IMAGES["aws"]
    env = {e["name"]: e for e in container["env"]}
    assert env["QDRANT_PEERS"]["value"] == " ".join(PEERS)
    assert env["QDRANT_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "qdrant-api-key", "key": "api-key"}
    assert env["BUCKET"]["value"] == "rag-prod-qdrant-backups"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["volumes"][0]["configMap"]["name"] == "qdrant-backup-script"
    assert pod["automountServiceAccountToken"] is False
    assert "AWS_REGION" not in env
    regional = b.cronjob_spec(backup_args(aws_region="eu-west-1"), "x", "y")
    regional_env = regional["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "AWS_REGION", "value": "eu-west-1"} in regional_env
    gcp = b.cronjob_spec(backup_args(cloud="gcp", bucket_location="EU"), "x", "y")
    assert gcp["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] == b.IMAGES["gcp"]


def test_destination() -> None:
    assert b.destination("aws", "bkt", "qdrant") == "s3://bkt/qdrant"
    assert b.destination("gcp", "bkt", "a/b") == "gs://bkt/a/b"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"schedule": "every night"}, "cron"),
        ({"bucket_name": "Bad_Bucket"}, "bucket_name"),
        ({"qdrant_peer_urls": ()}, "at least one node"),
        ({"qdrant_peer_urls": ("qdrant:6333",)}, "http"),
        ({"cloud": "gcp", "bucket_location": None}, "bucket_location"),
        ({"image": "amazon/aws-cli:latest"}, "latest"),
        ({"prefix": "/abs path"}, "prefix"),
    ],
)
def test_invalid_args_fail_with_a_sentence(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ComponentArgsError, match=message) as info:
        b.validate_args(backup_args(**overrides))
    assert str(info.value).endswith(".")


# ---------------------------------------------------------------------------------------------- component
def test_aws_bucket_is_versioned_encrypted_private_and_protected() -> None:
    program = run_backups(backup_args())
    assert_all_parented(program, "rag:ops:QdrantBackups")
    bucket = program.one("aws:s3/bucket:Bucket")
    assert bucket.name == "qdrant-backup-bucket"
    assert bucket.protect is True
    assert bucket.inputs["bucket"] == "rag-prod-qdrant-backups"
    versioning = program.one("aws:s3/bucketVersioning:BucketVersioning")
    assert versioning.inputs["versioningConfiguration"]["status"] == "Enabled"
    encryption = program.one(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
    )
    assert encryption.inputs["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "aws:kms"
    public = program.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock").inputs
    assert all(public[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls"))
    sa = program.named("qdrant-backup-sa").inputs
    assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/backup"}
    backups: b.QdrantBackups = program.result
    assert resolve(backups.bucket_name) == "rag-prod-qdrant-backups"
    assert backups.destination == "s3://rag-prod-qdrant-backups/qdrant"
    assert validate_manifests(program) == 4


def test_gcs_bucket_and_existing_bucket() -> None:
    program = run_backups(backup_args(cloud="gcp", bucket_location="EU", protect=False))
    bucket = program.one("gcp:storage/bucket:Bucket")
    assert bucket.inputs["publicAccessPrevention"] == "enforced"
    assert bucket.inputs["uniformBucketLevelAccess"] is True
    assert bucket.inputs["versioning"] == {"enabled": True}
    assert bucket.protect is False
    existing = run_backups(backup_args(create_bucket=False))
    assert not [r for r in existing.resources if r.type.startswith(("aws:", "gcp:"))]


def test_wires_to_a_qdrant_cluster() -> None:
    def build() -> b.QdrantBackups:
        cluster = QdrantCluster(
            "qdrant",
            QdrantClusterArgs(
                namespace="rag",
                api_key=pulumi.Output.secret(API_KEY),
                replicas=3,
                client_selectors=(b.backup_selector("qdrant-backup"),),
            ),
        )
        return b.QdrantBackups(
            "qdrant-backup",
            backup_args(
                qdrant_peer_urls=tuple(cluster.peer_urls),
                qdrant_api_key_secret=cluster.api_key_secret_name,
                qdrant_target=cluster.egress_target,
            ),
        )

    program = run_components(build)
    cron = program.one("kubernetes:batch/v1:CronJob").inputs
    env = {
        e["name"]: e for e in cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["QDRANT_PEERS"]["value"].split() == list(PEERS)
    qdrant_policy = program.named("qdrant-netpol").inputs["spec"]
    backup_pods = cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    allowed = qdrant_policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert allowed.items() <= backup_pods.items()
    policy = program.named("qdrant-backup-netpol").inputs["spec"]
    assert policy["ingress"] == []
    assert any(rule.get("to") for rule in policy["egress"])
