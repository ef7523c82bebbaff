"""Tests of the RedisCache component in its three modes: Valkey in the cluster, ElastiCache and Memorystore."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pulumi
import pytest

from infra.components import redis as r
from infra.components.rag_service import client_selector
from infra.components.specs import ComponentArgsError, Resources

from .conftest import Program, assert_all_parented, is_secret, resolve, run_components, validate_manifests

PASSWORD = "p@ss/word:with#chars-1234"


def incluster(**overrides: object) -> r.RedisCacheArgs:
    values: dict[str, object] = {
        "mode": "incluster",
        "password": pulumi.Output.secret(PASSWORD),
        "namespace": "rag",
        "client_selectors": (client_selector("rag"),),
        "protect": True,
    }
    values.update(overrides)
    return r.RedisCacheArgs(**values)  # type: ignore[arg-type]


def elasticache(**overrides: object) -> r.RedisCacheArgs:
    values: dict[str, object] = {
        "mode": "elasticache",
        "password": pulumi.Output.secret("a" * 32),
        "vpc_id": "vpc-123",
        "subnet_ids": ("subnet-a", "subnet-b"),
        "allowed_cidrs": ("10.0.0.0/16",),
        "protect": True,
    }
    values.update(overrides)
    return r.RedisCacheArgs(**values)  # type: ignore[arg-type]


def run_cache(args: r.RedisCacheArgs) -> Program:
    return run_components(lambda: r.RedisCache("redis", args))


def test_redis_url_encodes_the_password() -> None:
    assert r.redis_url("a/b@c", "h", 6379) == "redis://:a%2Fb%40c@h:6379/0"
    assert r.redis_url("pw", "h", tls=True).startswith("rediss://:pw@h:6379")
    assert r.redis_url(None, "h") == "redis://h:6379/0"


def test_maxmemory_follows_the_memory_limit_unless_set() -> None:
    def maxmemory(args: r.RedisCacheArgs) -> str:
        r.validate_args(args)
        container = r.valkey_container(args, "redis-password")
        return container["args"][container["args"].index("--maxmemory") + 1]

    def limited(memory: str, **more: object) -> r.RedisCacheArgs:
        res = Resources(cpu_request="100m", memory_request="64Mi", cpu_limit="500m", memory_limit=memory)
        return incluster(resources=res, **more)

    # Half the limit: a 128Mi container no longer runs Valkey at 200mb (OOM-killed), and a 4Gi one uses 2Gi.
    assert maxmemory(limited("128Mi")) == str(64 * 2**20)
    assert maxmemory(limited("4Gi")) == str(2 * 2**30)
    assert maxmemory(incluster()) == str(192 * 2**20)  # the default 384Mi limit
    # An explicit value in Valkey's units (mb = MiB, m = 10^6), refused at or above the limit.
    assert maxmemory(limited("1Gi", maxmemory="200mb")) == str(200 * 2**20)
    assert maxmemory(limited("1Gi", maxmemory="300m")) == str(300 * 10**6)
    with pytest.raises(ComponentArgsError, match="must be below the memory limit 1Gi"):
        r.validate_args(limited("1Gi", maxmemory="1gb"))
    with pytest.raises(ComponentArgsError, match="not a Valkey memory size"):
        r.validate_args(limited("1Gi", maxmemory="200MiB"))
    with pytest.raises(ComponentArgsError, match="under 32 MiB"):
        r.validate_args(limited("48Mi"))


def test_valkey_container_takes_password_from_env_not_manifest() -> None:
    container = r.valkey_container(incluster(), "redis-password")
    assert container["args"][:2] == ["--requirepass", "$(REDIS_PASSWORD)"]
    assert container["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "redis-password", "key": "password"}
    assert "--appendonly" in container["args"]
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["image"].startswith("valkey/valkey:8.")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (lambda: incluster(password=None), "password is required"),
        (lambda: incluster(namespace=None), "namespace is required"),
        (lambda: incluster(image="valkey/valkey:latest"), "latest"),
        (lambda: incluster(client_selectors=()), "client_selectors"),
        (lambda: elasticache(password="short"), "16 to 128"),
        (lambda: elasticache(subnet_ids=()), "subnet_ids"),
        (lambda: elasticache(allowed_cidrs=()), "allowed_cidrs"),
        (lambda: r.RedisCacheArgs(mode="memorystore"), "region"),
        (lambda: r.RedisCacheArgs(mode="sentinel"), "mode"),  # type: ignore[arg-type]
    ],
)
def test_invalid_args_fail_with_a_sentence(args: object, message: str) -> None:
    with pytest.raises(ComponentArgsError, match=message) as info:
        r.validate_args(args())  # type: ignore[operator]
    assert str(info.value).endswith(".")


def test_incluster_children_protection_and_secret_url() -> None:
    program = run_cache(incluster())
    component = assert_all_parented(program, "rag:data:RedisCache")
    assert {x.name for x in program.resources if x is not component} == {
        "redis-password",
        "redis-headless",
        "redis-service",
        "redis-statefulset",
        "redis-netpol",
    }
    assert program.named("redis-statefulset").protect is True
    assert "stringData" in program.named("redis-password").secret_paths
    assert PASSWORD not in repr(program.named("redis-statefulset").inputs)
    cache: r.RedisCache = program.result
    assert is_secret(cache.url)
    assert resolve(cache.url) == "redis://:p%40ss%2Fword%3Awith%23chars-1234@redis.rag.svc:6379/0"
    assert cache.egress_target.pod_labels["app.kubernetes.io/name"] == "valkey"
    assert validate_manifests(program) == 5


def test_a_new_password_replaces_only_an_unprotected_secret() -> None:
    # pulumi-kubernetes replaces a Secret whose data changes (enableSecretMutable off), and the engine refuses to
    # replace a protected resource: the Secret, rebuilt from the stack's RandomPassword, must not be protected.
    before, after = (
        run_cache(incluster()),
        run_cache(incluster(password=pulumi.Output.secret("another-pw-1234"))),
    )
    changed = {
        name
        for name in ("redis-password", "redis-statefulset")
        if before.named(name).inputs != after.named(name).inputs
    }
    assert changed == {
        "redis-password"
    }  # the pods read it through secretKeyRef: the StatefulSet spec is the same
    assert after.named("redis-password").protect is False
    assert after.named("redis-statefulset").protect is True


def test_elasticache_is_encrypted_authenticated_and_protected() -> None:
    program = run_cache(elasticache())
    assert_all_parented(program, "rag:data:RedisCache")
    group = program.one("aws:elasticache/replicationGroup:ReplicationGroup")
    assert group.name == "redis-replication-group"
    assert group.inputs["transitEncryptionEnabled"] is True
    assert group.inputs["atRestEncryptionEnabled"] is True
    assert group.inputs["engine"] == "valkey"
    assert group.inputs["automaticFailoverEnabled"] is True
    assert group.inputs["multiAzEnabled"] is True
    assert "authToken" in group.secret_paths
    assert group.protect is True
    sg = program.one("aws:ec2/securityGroup:SecurityGroup")
    assert sg.inputs["ingress"][0]["cidrBlocks"] == ["10.0.0.0/16"]
    assert sg.inputs["ingress"][0]["fromPort"] == 6379
    assert program.one("aws:elasticache/subnetGroup:SubnetGroup").inputs["subnetIds"] == [
        "subnet-a",
        "subnet-b",
    ]
    cache: r.RedisCache = program.result
    assert is_secret(cache.url)
    assert (
        resolve(cache.url)
        == f"rediss://:{'a' * 32}@master.redis-replication-group.cache.amazonaws.com:6379/0"
    )
    assert cache.egress_target.cidrs == ("10.0.0.0/16",)
    assert not [x for x in program.resources if x.type.startswith("kubernetes:")]


def test_single_node_elasticache_has_no_failover() -> None:
    program = run_cache(elasticache(num_cache_clusters=1, protect=False))
    group = program.one("aws:elasticache/replicationGroup:ReplicationGroup")
    assert group.inputs["automaticFailoverEnabled"] is False
    assert group.protect is False


def test_memorystore_uses_auth_and_outputs_a_secret_url() -> None:
    args = r.RedisCacheArgs(
        mode="memorystore",
        region="europe-west1",
        authorized_network="projects/p/global/networks/n",
        protect=True,
    )
    program = run_cache(args)
    assert_all_parented(program, "rag:data:RedisCache")
    instance = program.one("gcp:redis/instance:Instance")
    assert instance.inputs["authEnabled"] is True
    assert instance.inputs["tier"] == "STANDARD_HA"
    assert instance.protect is True
    cache: r.RedisCache = program.result
    assert is_secret(cache.url)
    assert resolve(cache.url) == "redis://:memorystore-auth@10.0.0.5:6379/0"


def test_each_child_gets_the_provider_of_its_package() -> None:
    import pulumi_aws as aws
    import pulumi_kubernetes as k8s

    def build() -> r.RedisCache:
        cluster = k8s.Provider("cluster", kubeconfig="apiVersion: v1\nkind: Config\n")
        cloud = aws.Provider("cloud", region="eu-west-1")
        return r.RedisCache("redis", elasticache(), pulumi.ResourceOptions(providers=[cluster, cloud]))

    program = run_components(build)
    cloud_urn = program.urn_of("cloud")
    aws_children = [x for x in program.resources if x.type.startswith("aws:")]
    assert len(aws_children) == 3
    for res in aws_children:
        assert res.provider.startswith(cloud_urn + "::"), res.name


def _run_set_aside(args: r.RedisCacheArgs, data: Path) -> subprocess.CompletedProcess[str]:
    """The init container's script, run by the machine's sh against `data` standing in for the volume's /data."""
    script = r.aof_set_aside_container(args)["command"][2].replace("/data/", f"{data}/")
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True, timeout=30)


def _aof(data: Path, header: bytes) -> Path:
    aof = data / "appendonlydir"
    aof.mkdir()
    (aof / "appendonly.aof.3.base.rdb").write_bytes(
        header + b"\xfa\x0bvalkey-ver\x059.0.0\xff" + bytes(range(256))
    )
    (aof / "appendonly.aof.3.incr.aof").write_bytes(b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n")
    (aof / "appendonly.aof.manifest").write_text("file appendonly.aof.3.base.rdb seq 3 type b\n")
    return aof


def test_a_declared_downgrade_moves_only_an_unreadable_append_only_file_aside(tmp_path: Path) -> None:
    """valkey-io/valkey#2888: 8.x exits at start on 9.x's `VALKEY080` base. With the declaration, the 8.x pod's init
    container moves such a file aside (once: what 8.x then writes is kept) and leaves a file 8.x reads alone."""
    assert (
        "initContainers" not in r.statefulset_spec(incluster(), "redis", "redis-password")["template"]["spec"]
    )
    args = incluster(image="valkey/valkey:8.1.3", aof_set_aside_from="9")
    pod = r.statefulset_spec(args, "redis", "redis-password")["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["aof-set-aside"]
    assert pod["initContainers"][0]["image"] == "valkey/valkey:8.1.3"
    assert pod["initContainers"][0]["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]

    newer, older = tmp_path / "newer", tmp_path / "older"
    newer.mkdir()
    older.mkdir()
    _aof(newer, b"VALKEY080")
    kept = _aof(older, b"REDIS0011")
    moved = _run_set_aside(args, newer)
    assert "RDB format 80 is newer than 11" in moved.stdout
    assert not (newer / "appendonlydir").exists()
    [aside] = [p for p in newer.iterdir() if p.name.startswith("appendonlydir.unreadable-")]
    assert (aside / "appendonly.aof.3.base.rdb").read_bytes().startswith(b"VALKEY080")
    _run_set_aside(args, older)
    assert sorted(p.name for p in older.iterdir()) == ["appendonlydir"]
    assert (kept / "appendonly.aof.3.base.rdb").read_bytes().startswith(b"REDIS0011")
    # The next start (8.x wrote its own file) and a first start (no file yet) keep what is there.
    _aof(newer, b"REDIS0011")
    _run_set_aside(args, newer)
    assert (newer / "appendonlydir").is_dir()
    empty = tmp_path / "empty"
    empty.mkdir()
    _run_set_aside(args, empty)
    assert list(empty.iterdir()) == []
    # A 9.x image reads 9.x's format: nothing is moved.
    _run_set_aside(incluster(image="valkey/valkey:9.0.1", aof_set_aside_from="10"), tmp_path / "older")
    assert (older / "appendonlydir").is_dir()


def test_the_formats_change_only_at_valkey_9() -> None:
    assert [r.aof_format(major) for major in (7, 8, 9)] == [11, 11, 80]
    assert r.image_major("valkey/valkey:9.0.1@sha256:abc") == 9
    assert r.image_major("valkey/valkey:latest") is None
    with pytest.raises(ComponentArgsError, match="needs an image tag that starts with its major"):
        r.aof_set_aside_container(incluster(image="valkey/valkey:latest", aof_set_aside_from="9"))
