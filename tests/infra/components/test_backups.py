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
from tests.infra.conftest import STACKS, run

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
    version = "1.15.4"
    created: list[str] = []
    deleted: list[str] = []
    uploaded: list[tuple[str, str, bytes]] = []  # (collection, query, body)

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
        if parts == [""]:
            self._json({"title": "qdrant - vector search engine", "version": self.version})
        elif parts == ["collections"]:
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
        path, _, query = self.path.partition("?")
        collection = path.strip("/").split("/")[1]
        if path.endswith("/snapshots/upload"):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            self.uploaded.append((collection, query, body))
            self._json({"result": True, "status": "ok"})
            return
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
    FakeQdrant.version = "1.15.4"
    FakeQdrant.created = []
    FakeQdrant.deleted = []
    FakeQdrant.uploaded = []
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
        f'echo "$*" >> "{tmp_path}/aws.log"\n'
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
        "TRANSFER_MAX_SECONDS": "60",  # the CronJob sets it from the node's data size
    }
    return subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_script_snapshots_every_collection_on_every_node(tmp_path: Path, fake_qdrant: str) -> None:
    peers = f"{fake_qdrant} {fake_qdrant.replace('127.0.0.1', 'localhost')}"
    result = run_script(tmp_path, peers, API_KEY)
    assert result.returncode == 0, result.stderr
    files = sorted(p.relative_to(tmp_path / "store") for p in (tmp_path / "store").rglob("*") if p.is_file())
    stored = [p for p in files if p.name != b.MANIFEST_NAME]
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
    # The upload is told each snapshot's size (Qdrant's answer), so streams above 50 GB fit S3's part limit.
    calls = (tmp_path / "aws.log").read_text().splitlines()
    assert len(calls) == 5
    assert all(call.endswith("--expected-size 10 --only-show-errors") for call in calls[:4])
    # The run's manifest comes last, so a run that died on the way has none: nodes, versions, collections.
    stamp = stored[0].parts[3]
    manifest_key = f"qdrant/prod/{stamp}/{b.MANIFEST_NAME}"
    assert f"s3://bucket/{manifest_key} " in calls[-1]
    manifest = (tmp_path / "store" / "bucket" / manifest_key).read_text()
    assert manifest == (
        f"format 1\nstamp {stamp}\n"
        "node 127 1.15.4 documents_a documents_b\nnode localhost 1.15.4 documents_a documents_b\n"
    )
    assert calls[-1].endswith(f"--expected-size {len(manifest)} --only-show-errors")


FAKE_AWS_READ = """#!/bin/bash
# A stand-in `aws` reading a directory tree as the bucket: `s3 ls [--recursive] s3://b/p/`, `s3 cp s3://b/k file`.
# Like the real CLI, `s3 ls` of a prefix with nothing under it prints nothing and exits 1.
set -uo pipefail
root="$FAKE_STORE"
if [ "$1 $2" = "s3 ls" ]; then
  if [ "$3" = "--recursive" ]; then
    path="${4#s3://}"; prefix="${path#*/}"
    [ -d "$root/${path%/}" ] || exit 1
    (cd "$root/${path%%/*}" && find "${prefix%/}" -type f | sort | sed 's/^/2026-01-01 00:00:00 10 /')
  else
    path="${3#s3://}"
    [ -d "$root/${path%/}" ] || exit 1
    for d in "$root/${path%/}"/*/; do echo "                           PRE $(basename "$d")/"; done
  fi
elif [ "$1 $2" = "s3 cp" ]; then
  cp "$root/${3#s3://}" "$4" || { echo "fatal error: An error occurred (404) when calling the HeadObject operation" >&2; exit 1; }
else
  exit 2
fi
"""

OLD, NEW = "20260101T030000Z", "20260102T030000Z"
NODES = ("127", "localhost")  # the node names of the two peer URLs below (one stand-in server)


def backup_run(
    store: Path,
    stamp: str,
    nodes: tuple[str, ...] = NODES,
    *,
    complete: bool = True,
    version: str = "1.15.4",
    collections: tuple[str, ...] = ("documents_a", "documents_b"),
) -> None:
    """A run as BACKUP_SCRIPT leaves it (its manifest format is asserted above): a snapshot per node and
    collection, holding "<stamp> <node> <collection>", then the manifest when the run completed."""
    run_dir = store / "bucket" / "qdrant" / stamp
    for node in nodes:
        for collection in collections:
            snap = run_dir / node / collection / f"{collection}-0.snapshot"
            snap.parent.mkdir(parents=True, exist_ok=True)
            snap.write_text(f"{stamp} {node} {collection}")
    if complete:
        run_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"node {node} {version} {' '.join(collections)}" for node in nodes]
        (run_dir / b.MANIFEST_NAME).write_text("\n".join(["format 1", f"stamp {stamp}", *lines, ""]))


def run_restore(tmp_path: Path, peers: str, **env: str) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        (bin_dir / "aws").write_text(FAKE_AWS_READ, encoding="utf-8")
        (bin_dir / "aws").chmod(0o755)
        (tmp_path / "scratch").mkdir()
    script = tmp_path / "restore.sh"
    script.write_text(b.RESTORE_SCRIPT, encoding="utf-8")
    base = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_STORE": str(tmp_path / "store"),
        "QDRANT_PEERS": peers,
        "QDRANT_API_KEY": API_KEY,
        "BUCKET": "bucket",
        "PREFIX": "qdrant",
        "CLOUD": "aws",
        "TRANSFER_MAX_SECONDS": "60",  # the CronJob sets it from the node's data size
        "SCRATCH": str(tmp_path / "scratch"),
    }
    return subprocess.run(
        ["bash", str(script)], env={**base, **env}, capture_output=True, text=True, timeout=60, check=False
    )


def restored() -> list[str]:
    """What the stand-in received: the snapshots' contents ("<stamp> <node> <collection>"), sorted."""
    assert all(query == "priority=snapshot&wait=true" for _, query, _ in FakeQdrant.uploaded)
    return sorted(
        body.decode().split("\r\n\r\n", 1)[-1].split("\r\n", 1)[0] for _, _, body in FakeQdrant.uploaded
    )


def two_peers(url: str) -> str:
    return f"{url} {url.replace('127.0.0.1', 'localhost')}"


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_restore_uploads_the_newest_complete_run_to_the_nodes_it_came_from(
    tmp_path: Path, fake_qdrant: str
) -> None:
    backup_run(tmp_path / "store", OLD)
    backup_run(tmp_path / "store", NEW)
    result = run_restore(tmp_path, two_peers(fake_qdrant))
    assert result.returncode == 0, result.stderr
    assert restored() == sorted(f"{NEW} {n} {c}" for n in NODES for c in ("documents_a", "documents_b"))
    assert list((tmp_path / "scratch").iterdir()) == []  # each snapshot is removed once uploaded
    assert summary(result) == {
        "event": "restore_finished",
        "snapshots": 4,
        "stamp": NEW,
        "nodes": "127 localhost",
        "complete_run": True,
    }
    FakeQdrant.uploaded = []
    pinned = run_restore(tmp_path, two_peers(fake_qdrant), RESTORE_STAMP=OLD)
    assert pinned.returncode == 0, pinned.stderr
    assert restored() == sorted(f"{OLD} {n} {c}" for n in NODES for c in ("documents_a", "documents_b"))
    missing = run_restore(tmp_path, two_peers(fake_qdrant), RESTORE_STAMP="20250101T000000Z")
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr


def test_restore_skips_a_newer_partial_run_and_restores_the_last_complete_one(
    tmp_path: Path, fake_qdrant: str
) -> None:
    # The O3 drill: the newest run died after node 127 (no manifest; the second node's upload never happened).
    backup_run(tmp_path / "store", OLD)
    backup_run(tmp_path / "store", NEW, ("127",), complete=False)
    result = run_restore(tmp_path, two_peers(fake_qdrant))
    assert result.returncode == 0, result.stderr
    assert restored() == sorted(f"{OLD} {n} {c}" for n in NODES for c in ("documents_a", "documents_b"))
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert {"event": "backup_skipped", "stamp": NEW, "reason": "no _COMPLETE: partial or running"} in events
    assert summary(result)["stamp"] == OLD


def test_restore_refuses_a_partial_run_unless_allowed_and_then_only_for_nodes_it_holds(
    tmp_path: Path, fake_qdrant: str
) -> None:
    backup_run(tmp_path / "store", NEW, ("127",), complete=False)
    refused = run_restore(tmp_path, two_peers(fake_qdrant), RESTORE_STAMP=NEW)
    assert refused.returncode == 1
    assert "has no _COMPLETE manifest" in refused.stderr
    nothing = run_restore(tmp_path, two_peers(fake_qdrant))  # no complete run at all
    assert nothing.returncode == 1
    assert "no complete backup run" in nothing.stderr
    short = run_restore(tmp_path, two_peers(fake_qdrant), RESTORE_STAMP=NEW, RESTORE_ALLOW_PARTIAL="1")
    assert short.returncode == 1
    assert "holds no snapshot of node localhost" in short.stderr
    assert FakeQdrant.uploaded == []  # checked before the first upload: nothing half-restored
    chosen = run_restore(
        tmp_path, two_peers(fake_qdrant), RESTORE_STAMP=NEW, RESTORE_ALLOW_PARTIAL="1", RESTORE_NODES="127"
    )
    assert chosen.returncode == 0, chosen.stderr
    assert restored() == [f"{NEW} 127 documents_a", f"{NEW} 127 documents_b"]
    assert summary(chosen)["complete_run"] is False


def test_restore_fails_before_any_upload_when_a_listed_snapshot_is_missing(
    tmp_path: Path, fake_qdrant: str
) -> None:
    backup_run(tmp_path / "store", NEW)
    (
        tmp_path
        / "store"
        / "bucket"
        / "qdrant"
        / NEW
        / "localhost"
        / "documents_b"
        / "documents_b-0.snapshot"
    ).unlink()
    result = run_restore(tmp_path, two_peers(fake_qdrant))
    assert result.returncode == 1
    assert "lists collection documents_b on node localhost but holds no snapshot of it" in result.stderr
    assert FakeQdrant.uploaded == []
    assert json.loads(result.stdout.strip().splitlines()[-1])["event"] == "restore_refused"


def test_restore_only_the_chosen_nodes(tmp_path: Path, fake_qdrant: str) -> None:
    backup_run(tmp_path / "store", NEW)
    result = run_restore(tmp_path, two_peers(fake_qdrant), RESTORE_NODES="localhost")
    assert result.returncode == 0, result.stderr
    assert restored() == [f"{NEW} localhost documents_a", f"{NEW} localhost documents_b"]
    wrong = run_restore(tmp_path, two_peers(fake_qdrant), RESTORE_NODES="qdrant-9")
    assert wrong.returncode == 1
    assert "RESTORE_NODES names qdrant-9, not a node of this cluster (127 localhost)" in wrong.stderr
    # A node the run does not know (the cluster grew since): refused, not skipped.
    backup_run(tmp_path / "store", "20260103T030000Z", ("127",))
    grown = run_restore(tmp_path, two_peers(fake_qdrant))
    assert grown.returncode == 1
    assert "has no entry for node localhost" in grown.stderr


def test_restore_refuses_snapshots_of_another_qdrant_minor(tmp_path: Path, fake_qdrant: str) -> None:
    backup_run(tmp_path / "store", OLD, version="1.14.1")
    result = run_restore(tmp_path, two_peers(fake_qdrant))
    assert result.returncode == 1
    assert "taken with Qdrant 1.14.1; the node runs 1.15.4" in result.stderr
    assert FakeQdrant.uploaded == []
    backup_run(tmp_path / "store", NEW, version="1.15.0")  # another patch of the same minor restores
    assert run_restore(tmp_path, two_peers(fake_qdrant)).returncode == 0


def test_restore_of_a_node_without_collections_is_complete(tmp_path: Path, fake_qdrant: str) -> None:
    backup_run(tmp_path / "store", NEW, collections=())
    result = run_restore(tmp_path, two_peers(fake_qdrant))
    assert result.returncode == 0, result.stderr
    assert summary(result)["snapshots"] == 0
    assert FakeQdrant.uploaded == []


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
    assert (
        validate_manifests(program) == 5
    )  # SA, script ConfigMap, backup and restore CronJobs, NetworkPolicy


def test_restore_cronjob_is_a_suspended_template_with_scratch_sized_from_the_data() -> None:
    spec = b.restore_cronjob_spec(
        backup_args(restore_scratch_size="100Gi", restore_scratch_storage_class="gp3"), "qb", "s"
    )
    assert spec["suspend"] is True
    assert spec["schedule"] == b.NEVER
    pod = spec["jobTemplate"]["spec"]["template"]
    # The backup job's pod labels: its NetworkPolicy and Qdrant's client rule cover the restore pods too.
    assert (
        pod["metadata"]["labels"]
        == b.cronjob_spec(backup_args(), "qb", "s")["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    )
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["/bin/bash", "/scripts/restore.sh"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # What the restore script reads; empty/0 = the newest complete run, every node, no partial run.
    assert {k: env[k] for k in ("SCRATCH", "RESTORE_STAMP", "RESTORE_NODES", "RESTORE_ALLOW_PARTIAL")} == {
        "SCRATCH": "/scratch",
        "RESTORE_STAMP": "",
        "RESTORE_NODES": "",
        "RESTORE_ALLOW_PARTIAL": "0",
    }
    scratch = next(v for v in pod["spec"]["volumes"] if v["name"] == "scratch")
    claim = scratch["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["resources"]["requests"]["storage"] == "100Gi"
    assert claim["storageClassName"] == "gp3"


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
    cron = program.one("kubernetes:batch/v1:CronJob", "qdrant-backup-cronjob").inputs
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


# ---------------------------------------------------------------------------------------------- destroyability
def test_force_destroy_reaches_both_clouds_buckets_and_never_a_protected_one() -> None:
    aws_bucket = run_backups(backup_args(protect=False, force_destroy=True)).one("aws:s3/bucket:Bucket")
    assert (aws_bucket.inputs["forceDestroy"], aws_bucket.protect) == (True, False)
    gcs = run_backups(backup_args(cloud="gcp", bucket_location="EU", protect=False, force_destroy=True))
    gcs_bucket = gcs.one("gcp:storage/bucket:Bucket")
    assert (gcs_bucket.inputs["forceDestroy"], gcs_bucket.protect) == (True, False)
    kept = run_backups(backup_args()).one("aws:s3/bucket:Bucket")
    assert (kept.inputs["forceDestroy"], kept.protect) == (False, True)
    with pytest.raises(ComponentArgsError, match="force_destroy cannot be combined with protect"):
        b.validate_args(backup_args(protect=True, force_destroy=True))


@pytest.mark.parametrize("target", ["gke", "eks"])
def test_real_stacks_buckets_are_destroyable_outside_prod_and_kept_in_prod(target: str) -> None:
    """Every committed stack file that creates a backup bucket: outside prod `pulumi destroy` empties and deletes
    it (no BucketNotEmpty after the first backup); prod's is protected and never emptied by a destroy."""
    bucket_type = {"gke": "gcp:storage/bucket:Bucket", "eks": "aws:s3/bucket:Bucket"}[target]
    seen: set[str] = set()
    # The same cached runs as tests/infra/test_program.py's: no extra program run in the full suite.
    for stack in STACKS:
        buckets = [r for r in run(stack, target).resources if r.type == bucket_type]
        for bucket in buckets:
            seen.add(stack)
            if stack == "prod":
                assert (bucket.inputs["forceDestroy"], bucket.protect) == (False, True), bucket.urn
            else:
                assert (bucket.inputs["forceDestroy"], bucket.protect) == (True, False), bucket.urn
    # The stacks that run backups (staging and prod) really were checked.
    assert {"staging", "prod"} <= seen
