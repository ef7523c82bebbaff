"""``ragops qdrant-drain`` against a stand-in Qdrant on a real socket speaking the cluster API's shapes (qdrant/qdrant
docs/redoc/v1.19.x/openapi.json: ClusterStatus, CollectionClusterInfo, ClusterOperations MoveShard/Replica,
DELETE /cluster/peer/{peer_id} refusing a peer that still holds shards). Transfers finish a poll or two after they
start, as Qdrant's run in the background; the tool's pause between polls is injected (no sleeping)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from infra.workflows import qdrant_drain as qd

PEERS = {101: 0, 202: 1, 303: 2, 404: 3}  # peer id -> StatefulSet ordinal


class FakeCluster:
    """A Qdrant cluster seen through node 0. `shards[collection][shard] = {peer: state}`."""

    def __init__(self, shards: dict[str, dict[int, dict[int, str]]], polls_per_transfer: int = 2) -> None:
        self.shards = shards
        self.peers = dict(PEERS)
        self.transfers: list[dict[str, Any]] = []  # {collection, shard, from, to, polls_left}
        self.polls_per_transfer = polls_per_transfer
        self.posted: list[tuple[str, dict[str, Any]]] = []
        self.refused_deletes: list[int] = []

    def _tick(self, collection: str) -> None:
        for transfer in [t for t in self.transfers if t["collection"] == collection]:
            transfer["polls_left"] -= 1
            if transfer["polls_left"] <= 0:
                holders = self.shards[collection][transfer["shard"]]
                holders.pop(transfer["from"], None)
                holders[transfer["to"]] = "Active"
                self.transfers.remove(transfer)

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        parts = path.split("?")[0].strip("/").split("/")
        if method == "GET" and parts == ["cluster"]:
            peers = {
                str(p): {"uri": f"http://qdrant-{i}.qdrant-headless.rag.svc:6335/"}
                for p, i in self.peers.items()
            }
            return 200, {
                "status": "enabled",
                "peer_id": 101,
                "peers": peers,
                "raft_info": {},
                "message_send_failures": {},
            }
        if method == "GET" and parts == ["collections"]:
            return 200, {"collections": [{"name": name} for name in self.shards]}
        if parts[:1] == ["collections"] and parts[2:] == ["cluster"]:
            name = parts[1]
            if method == "POST":
                self.posted.append((name, body))
                if "move_shard" in body:
                    move = body["move_shard"]
                    self.shards[name][move["shard_id"]][move["to_peer_id"]] = "Partial"
                    self.transfers.append(
                        {
                            "collection": name,
                            "shard": move["shard_id"],
                            "from": move["from_peer_id"],
                            "to": move["to_peer_id"],
                            "polls_left": self.polls_per_transfer,
                        }
                    )
                else:
                    drop = body["drop_replica"]
                    self.shards[name][drop["shard_id"]].pop(drop["peer_id"])
                return 200, True
            self._tick(name)
            local = [
                {"shard_id": s, "points_count": 10, "state": h[101]}
                for s, h in self.shards[name].items()
                if 101 in h
            ]
            remote = [
                {"shard_id": s, "peer_id": p, "state": state}
                for s, h in self.shards[name].items()
                for p, state in h.items()
                if p != 101
            ]
            transfers = [
                {"shard_id": t["shard"], "from": t["from"], "to": t["to"], "sync": False}
                for t in self.transfers
                if t["collection"] == name
            ]
            return 200, {
                "peer_id": 101,
                "shard_count": len(self.shards[name]),
                "local_shards": local,
                "remote_shards": remote,
                "shard_transfers": transfers,
            }
        if method == "DELETE" and parts[:2] == ["cluster", "peer"]:
            peer = int(parts[2])
            if any(peer in h for c in self.shards.values() for h in c.values()):
                self.refused_deletes.append(peer)
                return 400, {"error": f"Peer {peer} has shards on it"}
            self.peers.pop(peer)
            return 200, True
        return 404, {"error": f"no route {method} {path}"}


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start(cluster: FakeCluster) -> str:
        class Handler(BaseHTTPRequestHandler):
            def _reply(self, method: str) -> None:
                assert self.headers["api-key"] == "k3y"
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                status, result = cluster.answer(method, self.path, body)
                key = "result" if status < 400 else "status"
                payload = json.dumps({key: result, "time": 0.0}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self._reply("GET")

            def do_POST(self) -> None:
                self._reply("POST")

            def do_DELETE(self) -> None:
                self._reply("DELETE")

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def active(*peers: int) -> dict[int, str]:
    return dict.fromkeys(peers, "Active")


def test_scaling_4_to_3_moves_every_replica_off_qdrant_3_then_removes_its_peer(serve: Any) -> None:
    cluster = FakeCluster(
        {
            "docs": {0: active(101, 404), 1: active(202, 404), 2: active(303, 101), 3: active(404, 303)},
            "other": {0: active(404, 202)},
        }
    )
    pauses: list[int] = []

    report = qd.drain(serve(cluster), "k3y", 3, pause=lambda: pauses.append(1))

    assert report.removed_peers == [404]
    assert report.dropped == []
    assert {(c, s) for c, s, source, _ in report.moved} == {
        ("docs", 0),
        ("docs", 1),
        ("docs", 3),
        ("other", 0),
    }
    for collection in cluster.shards.values():
        for holders in collection.values():
            assert 404 not in holders
            assert len(holders) == 2  # the replication factor kept
            assert set(holders.values()) == {"Active"}
    # Each target held no replica of its shard before.
    assert all(target not in (101, 404) for c, s, _, target in report.moved if (c, s) == ("docs", 0))
    assert pauses  # it waited for the background transfers instead of removing the peer at once
    assert cluster.refused_deletes == []
    assert 404 not in cluster.peers


def test_a_shard_on_every_staying_node_already_drops_the_leaving_replica(serve: Any) -> None:
    cluster = FakeCluster({"docs": {0: active(101, 202, 303), 1: active(101, 303)}})
    cluster.peers = {101: 0, 202: 1, 303: 2}
    report = qd.drain(serve(cluster), "k3y", 2, pause=lambda: None)
    assert report.dropped == [("docs", 0, 303)]  # replicated on both staying nodes already
    assert report.moved == [("docs", 1, 303, 202)]
    assert report.removed_peers == [303]


def test_it_refuses_before_changing_anything_when_a_transfer_runs_or_a_shard_has_no_active_replica(
    serve: Any,
) -> None:
    busy = FakeCluster({"docs": {0: active(101, 404)}})
    busy.transfers.append({"collection": "docs", "shard": 0, "from": 101, "to": 202, "polls_left": 99})
    with pytest.raises(qd.DrainError, match="already running"):
        qd.drain(serve(busy), "k3y", 3, pause=lambda: None)
    assert busy.posted == []

    dead = FakeCluster({"docs": {0: {404: "Dead"}}})
    with pytest.raises(qd.DrainError, match="no Active replica"):
        qd.drain(serve(dead), "k3y", 3, pause=lambda: None)
    assert dead.posted == []
    assert 404 in dead.peers


def test_a_transfer_that_never_finishes_leaves_the_peer_in_place_and_says_so(serve: Any) -> None:
    stuck = FakeCluster({"docs": {0: active(101, 404)}}, polls_per_transfer=10_000)
    with pytest.raises(qd.DrainError, match="still moving"):
        qd.drain(serve(stuck), "k3y", 3, pause=lambda: None, rounds=3)
    assert 404 in stuck.peers  # never removed while it holds a replica
    assert stuck.refused_deletes == []


def test_nothing_to_do_and_bad_arguments(serve: Any) -> None:
    cluster = FakeCluster({"docs": {0: active(101, 202)}})
    assert qd.drain(serve(cluster), "k3y", 4, pause=lambda: None).removed_peers == []
    with pytest.raises(qd.DrainError, match="at least 1"):
        qd.drain(serve(cluster), "k3y", 0, pause=lambda: None)


def test_the_cli_drains_with_the_key_from_the_environment_and_says_what_is_next(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from infra.workflows.cli import app

    cluster = FakeCluster({"docs": {0: active(101, 404)}}, polls_per_transfer=0)
    url = serve(cluster)
    runner = CliRunner()
    monkeypatch.delenv("QDRANT_API_KEY", raising=False)
    refused = runner.invoke(app, ["qdrant-drain", "--url", url, "--keep", "3"])
    assert refused.exit_code == 2
    assert "QDRANT_API_KEY is empty" in refused.output
    assert cluster.posted == []

    monkeypatch.setenv("QDRANT_API_KEY", "k3y")
    done = runner.invoke(app, ["qdrant-drain", "--url", url, "--keep", "3"])
    assert done.exit_code == 0, done.output
    assert "moved docs shard 0: peer 404 -> " in done.output
    assert "removed peers: 404" in done.output
    assert "scaleDownTo to 3" in done.output
