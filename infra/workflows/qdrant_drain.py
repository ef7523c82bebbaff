"""``ragops qdrant-drain``: the first two steps of scaling Qdrant down (docs/runbooks.md#scale-qdrant-down).

Before the StatefulSet loses its highest pods, every shard replica on them moves to a node that stays, and their
peers leave the Raft consensus. Through Qdrant's cluster API (qdrant/qdrant docs/redoc openapi: ``GET /cluster``,
``GET /collections``, ``GET|POST /collections/{name}/cluster``, ``DELETE /cluster/peer/{id}``), for each collection
and each replica on a leaving peer:

- ``move_shard`` (``stream_records``) to the staying peer that holds no replica of that shard and the fewest shards,
- or ``drop_replica`` when every staying peer already holds one (the shard keeps as many copies as there are
  staying nodes: a replication factor above the node count cannot be kept anyway);

then it waits until no transfer runs and no replica is left on the leaving peers, and removes each leaving peer
WITHOUT ``force`` (Qdrant refuses a peer that still holds shards: the last check). It refuses to start when a
shard has no ``Active`` replica on a staying peer and none it can move (a shard held only by a Dead replica), and
when a transfer is already running. The nodes are told apart by their p2p URI (``http://<base>-<i>.<headless>...``):
ordinals ``>= keep`` leave, which is what the StatefulSet removes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from infra.workflows.stacks import WorkflowError

ORDINAL_RE = re.compile(r"^https?://[a-z0-9-]*?-(\d+)\.")
POLL_ROUNDS = 720
"""How many times the transfers are checked (every `pause`, 5 s by default: an hour) before giving up."""


class DrainError(WorkflowError):
    """The drain cannot start or did not finish; the message says what is left and what to do."""


@dataclass
class DrainReport:
    """What one drain did."""

    moved: list[tuple[str, int, int, int]] = field(default_factory=list)  # (collection, shard, from, to)
    dropped: list[tuple[str, int, int]] = field(default_factory=list)  # (collection, shard, peer)
    removed_peers: list[int] = field(default_factory=list)


def _result(response: httpx.Response, what: str) -> Any:
    if response.status_code >= 400:
        raise DrainError(f"Qdrant refused {what} (HTTP {response.status_code}): {response.text[:300]}")
    return response.json().get("result")


def peer_ordinals(cluster: dict[str, Any]) -> dict[int, int]:
    """Peer id -> StatefulSet ordinal, from `GET /cluster`'s `peers` ({id: {uri}})."""
    if cluster.get("status") != "enabled":
        raise DrainError("Qdrant does not run in cluster mode: there is nothing to drain.")
    ordinals = {}
    for peer_id, info in (cluster.get("peers") or {}).items():
        match = ORDINAL_RE.match(str(info.get("uri", "")))
        if match is None:
            raise DrainError(
                f"peer {peer_id} has the URI {info.get('uri')!r}, not a StatefulSet pod's: stopping."
            )
        ordinals[int(peer_id)] = int(match.group(1))
    return ordinals


def replicas_of(info: dict[str, Any]) -> dict[int, dict[int, str]]:
    """Shard id -> {peer id: state}, from `GET /collections/{name}/cluster`."""
    shards: dict[int, dict[int, str]] = {}
    for local in info.get("local_shards") or []:
        shards.setdefault(int(local["shard_id"]), {})[int(info["peer_id"])] = str(local["state"])
    for remote in info.get("remote_shards") or []:
        shards.setdefault(int(remote["shard_id"]), {})[int(remote["peer_id"])] = str(remote["state"])
    return shards


def plan(
    shards: dict[int, dict[int, str]], leaving: set[int], staying: set[int], load: dict[int, int]
) -> list[dict[str, Any]]:
    """The cluster operations that empty the leaving peers of one collection (pure; `load` is updated)."""
    operations: list[dict[str, Any]] = []
    for shard_id in sorted(shards):
        holders = shards[shard_id]
        on_leaving = sorted(p for p in holders if p in leaving)
        if not on_leaving:
            continue
        active = [p for p, state in holders.items() if state == "Active"]
        if not active:
            raise DrainError(
                f"shard {shard_id} has no Active replica (replicas: {holders}): nothing safe to copy."
            )
        for peer in on_leaving:
            targets = sorted((p for p in staying if p not in holders), key=lambda p: (load.get(p, 0), p))
            if targets and holders[peer] == "Active":
                target = targets[0]
                operations.append(
                    {
                        "move_shard": {
                            "shard_id": shard_id,
                            "from_peer_id": peer,
                            "to_peer_id": target,
                            "method": "stream_records",
                        }
                    }
                )
                holders = {**holders, target: "Partial"}
                load[target] = load.get(target, 0) + 1
            elif any(p in staying and holders[p] == "Active" for p in holders):
                operations.append({"drop_replica": {"shard_id": shard_id, "peer_id": peer}})
            else:
                raise DrainError(
                    f"shard {shard_id}'s only Active replicas are on leaving peers and no staying peer can take it "
                    f"(replicas: {holders}): raise the kept node count."
                )
    return operations


def drain(
    url: str,
    api_key: str,
    keep: int,
    *,
    transport: httpx.BaseTransport | None = None,
    pause: Callable[[], None] | None = None,
    rounds: int = POLL_ROUNDS,
) -> DrainReport:
    """Move every shard replica off the nodes with ordinal >= `keep` and remove their peers (see module doc)."""
    import time

    wait = pause or (lambda: time.sleep(5))
    if keep < 1:
        raise DrainError("keep must be at least 1: a cluster of no node holds no data.")
    report = DrainReport()
    with httpx.Client(base_url=url, headers={"api-key": api_key}, transport=transport, timeout=30) as client:
        ordinals = peer_ordinals(_result(client.get("/cluster"), "GET /cluster"))
        leaving = {p for p, i in ordinals.items() if i >= keep}
        staying = {p for p, i in ordinals.items() if i < keep}
        if not staying:
            raise DrainError(f"no peer has an ordinal below {keep}: nothing would stay.")
        if not leaving:
            return report
        names = [c["name"] for c in _result(client.get("/collections"), "GET /collections")["collections"]]
        infos = {
            name: _result(client.get(f"/collections/{name}/cluster"), f"GET /collections/{name}/cluster")
            for name in names
        }
        load: dict[int, int] = {}
        for info in infos.values():
            if info.get("shard_transfers"):
                raise DrainError(
                    f"a shard transfer is already running ({info['shard_transfers']}): let it finish, then drain."
                )
            for holders in replicas_of(info).values():
                for peer in holders:
                    load[peer] = load.get(peer, 0) + 1
        for name, info in infos.items():
            for operation in plan(replicas_of(info), leaving, staying, load):
                _result(client.post(f"/collections/{name}/cluster", json=operation), f"{operation} on {name}")
                if "move_shard" in operation:
                    move = operation["move_shard"]
                    report.moved.append((name, move["shard_id"], move["from_peer_id"], move["to_peer_id"]))
                else:
                    drop = operation["drop_replica"]
                    report.dropped.append((name, drop["shard_id"], drop["peer_id"]))
        pending = set(names)
        for _ in range(rounds):
            for name in sorted(pending):
                info = _result(client.get(f"/collections/{name}/cluster"), f"GET /collections/{name}/cluster")
                left = [s for s, holders in replicas_of(info).items() if set(holders) & leaving]
                if not info.get("shard_transfers") and not left:
                    pending.discard(name)
            if not pending:
                break
            wait()
        if pending:
            raise DrainError(
                f"shards are still moving or still on the leaving peers of {sorted(pending)}: check "
                "`GET /collections/<name>/cluster` and run the drain again (it only plans what is left)."
            )
        for peer in sorted(leaving):
            _result(client.delete(f"/cluster/peer/{peer}"), f"DELETE /cluster/peer/{peer}")
            report.removed_peers.append(peer)
    return report
